"""`PartitionOutput.labels_caught_up` with an aiokafka consumer (not started: `assign` and `highwater` are
local state): a partition a rebalance has taken away counts as lagging instead of raising inside the batch; and
`PartitionOutput.batch` queues its sends a few hundred per turn of the loop."""

import asyncio
from types import SimpleNamespace

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.pipeline.config import load_config
from streams.pipeline.events import Invalid
from streams.pipeline.join_output import PartitionOutput
from streams.pipeline.partials_topic import PACE


class Click(msgspec.Struct):
    impression_id: str


def test_a_partition_no_longer_assigned_counts_as_lagging_and_does_not_raise():
    async def check() -> tuple[bool, bool]:
        config = load_config(None)
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
        consumer.assign([TopicPartition(topic, 0) for topic in config.topics.sources])
        output = PartitionOutput(config, None, None, consumer, None)
        try:
            lost = output.labels_caught_up(SimpleNamespace(partition=1, offsets={}))  # raised AssertionError before
            no_fetch_yet = output.labels_caught_up(SimpleNamespace(partition=0, offsets={}))
        finally:
            await consumer.stop()
        return lost, no_fetch_yet

    assert asyncio.run(check()) == (False, False)


def test_an_end_reported_before_the_impressions_that_moved_the_clock_counts_as_lagging():
    """The Apache Kafka failure: a clicks partition whose records sat in the fetch buffer was left out of the
    fetch that brought a closing impression, so its known end predated clicks produced before that impression."""

    async def check() -> list[bool]:
        config = load_config(None)
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
        tps = [TopicPartition(topic, 0) for topic in config.topics.sources]
        consumer.assign(tps)
        assignment = consumer._subscription.subscription.assignment
        output = PartitionOutput(config, None, None, consumer, None)
        read = SimpleNamespace(partition=0, offsets={tp.topic: 10 for tp in tps})

        def fetched(polled_ms: dict[str, int], highwater: int = 10) -> bool:
            for tp in tps:
                state = assignment.state_value(tp)
                state.highwater, state.timestamp = highwater, polled_ms.get(tp.topic, 1_000)
            return output.labels_caught_up(read)

        try:
            return [
                fetched({}),  # every end from the same fetch, all read: caught up
                fetched({config.topics.clicks: 999}),  # clicks' end older than the impressions' fetch
                fetched({config.topics.impressions: 999}),  # impressions fetched before the others: fine
                fetched({config.topics.rekeyed: 1_001}),  # re-keyed impressions moved the clock later
                fetched({}, highwater=11),  # one record unread on every label topic
            ]
        finally:
            await consumer.stop()

    assert asyncio.run(check()) == [True, False, True, False, False]


def test_a_flood_of_dead_letters_and_rekeys_hands_the_loop_back_every_few_hundred_sends():
    """10,000 refused events of one fetch were queued in one turn of the loop (0.16 s)."""

    class Sends:
        def __init__(self) -> None:
            self.sent = 0

        async def send(self, *args, **kwargs):
            self.sent += 1
            return asyncio.get_running_loop().create_future()

    async def check() -> tuple[int, int, int]:
        config = load_config(None)
        sends = Sends()
        output = PartitionOutput(config, sends, sends, None, SimpleNamespace(rekeyed=0))

        async def nothing_to_emit(state):
            return []

        output._emit = nothing_to_emit
        message = SimpleNamespace(value=b"{}", key=b"k", topic="t", partition=0, offset=0)
        event = Click(impression_id="i")
        routed = SimpleNamespace(refused=[(message, [Invalid("bad_type:ts", 0)])] * 1_000, rekeys=[(1, 1, event)] * 600)
        turns = 0

        async def ticker() -> None:
            nonlocal turns
            while True:
                await asyncio.sleep(0)
                turns += 1

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = turns
        out = await output.batch(routed, None)
        tick.cancel()
        return len(out), sends.sent, turns - before

    n, sent, turns = asyncio.run(check())
    assert (n, sent) == (1_600, 1_600)
    assert turns >= 1_000 // PACE + 600 // PACE  # one at least per PACE sends of each kind
