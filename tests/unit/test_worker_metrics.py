"""/metrics and /stats of a worker with several join processes (`--processes N`): the counters of every
process summed, the per-partition gauges from the process that owns each partition."""

from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from streams.pipeline.config import load_config
from streams.pipeline.join_worker import JoinWorker
from streams.pipeline.metrics import MapTracker, RecalCollector, exposition, registry


class Highwater:
    def __init__(self, ends: dict[tuple[str, int], int]) -> None:
        self.ends = ends

    def highwater(self, tp):
        return self.ends.get((tp.topic, tp.partition))


def worker(config, partitions: dict[int, int], events: int, segments: int) -> JoinWorker:
    """A join worker owning `partitions` ({partition: pending impressions}), `events` impressions read."""
    w = JoinWorker(config)
    topic = config.topics.impressions
    w.stats.events_in[topic] = events
    w.stats.labeled["ctr"] = events // 2
    w.parts = {
        p: SimpleNamespace(join=SimpleNamespace(pending=dict.fromkeys(range(n))), offsets={topic: 10})
        for p, n in partitions.items()
    }
    w.consumer = Highwater({(topic, p): 10 + p for p in partitions})
    w.guard.keys = {("ctr", ("site",)): set(range(segments))}
    return w


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_metrics_sum_every_join_process_and_take_each_partition_from_its_owner():
    config = load_config(None)
    first = worker(config, {0: 2, 2: 1}, events=100, segments=5)
    other = worker(config, {1: 4, 3: 0}, events=40, segments=7)
    first.peers = SimpleNamespace(poll=lambda: {0: other.report()})  # what the other process last sent
    publisher = SimpleNamespace(published=0, refused=0, failures=0, pending={})
    aggregator = SimpleNamespace(gate_refusals=0, published={}, metrics={}, drift={}, refused={})
    text = exposition(registry(RecalCollector(first, publisher, aggregator, MapTracker())))
    got = samples(text)
    imps = config.topics.impressions
    assert got[("recal_events_in_total", (("topic", imps),))] == 140
    assert got[("recal_labeled_total", (("model", "ctr"),))] == 70
    assert got[("recal_partitions_assigned", ())] == 4
    assert {p: got[("recal_join_pending", (("partition", str(p)),))] for p in range(4)} == {0: 2, 1: 4, 2: 1, 3: 0}
    lag = {p: got[("recal_consumer_lag", (("partition", str(p)), ("topic", imps)))] for p in range(4)}
    assert lag == {0: 0, 1: 1, 2: 2, 3: 3}
    assert got[("recal_segment_keys", (("model", "ctr"),))] == 7  # the largest: the sets overlap
