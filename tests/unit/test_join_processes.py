"""`[worker] processes`: a number is taken as given; 0 is one process per CPU this process may run on."""

import os

import pytest

from streams.pipeline.join_processes import process_count


def test_an_explicit_count_is_taken_as_given():
    assert process_count(3) == 3


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no affinity mask on this platform")
def test_zero_counts_the_cpus_of_the_affinity_mask_not_the_host(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5})
    monkeypatch.setattr(os, "cpu_count", lambda: 32)
    assert process_count(0) == 2


def test_paced_hands_the_loop_back_between_slices():
    import asyncio

    from streams.pipeline.partials_topic import paced

    async def main():
        ran = []

        async def other():
            while True:
                ran.append(len(seen))
                await asyncio.sleep(0)

        seen: list[int] = []
        task = asyncio.ensure_future(other())
        await asyncio.sleep(0)
        async for item in paced(list(range(600)), every=256):
            seen.append(item)
        task.cancel()
        return seen, ran

    seen, ran = asyncio.run(main())
    assert seen == list(range(600))
    assert 256 in ran and 512 in ran  # the other task ran after each slice, not only before and after
