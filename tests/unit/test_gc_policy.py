import gc

import pytest

from streams.pipeline import gc_policy


@pytest.fixture
def restored_gc():
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_running_collections_never_walk_the_long_lived_objects(restored_gc):
    gc_policy.collect_young_only()
    assert gc.get_freeze_count() > 0  # what existed at start is out of every collection
    assert gc.get_threshold() == (gc_policy.YOUNG, gc_policy.GENERATION_1, gc_policy.NEVER)
    old = [object() for _ in range(3)]
    gc.collect(1)  # `old` survived the young generations: from now on only a full collection walks it
    assert any(o is old for o in gc.get_objects(2))
    assert not any(o is old for o in gc.get_objects(0)) and not any(o is old for o in gc.get_objects(1))


def test_a_cycle_that_outlived_the_young_generations_is_freed_at_stop(restored_gc):
    gc_policy.collect_young_only()
    cycle: list = []
    cycle.append(cycle)
    gc.collect(1)  # long-lived: in the oldest generation
    del cycle
    assert gc.collect(1) == 0  # young collections do not find it
    assert gc_policy.collect_at_stop() >= 1
    assert gc.get_freeze_count() == 0
