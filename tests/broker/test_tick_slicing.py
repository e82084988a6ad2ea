"""The broker's periodic log maintenance yields to the event loop between partitions (issue 10,
item 4): with thousands of partitions one pass takes tens of milliseconds, which every client
waited for ten times a second when the pass ran in one turn.

No timing here: the slice length is set to zero, so every partition's share is its own turn, and a
task counting event-loop turns proves the pass let others run between partitions.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flowbus.broker import core as core_module
from flowbus.broker.config import BrokerConfig
from flowbus.broker.core import BrokerCore, NewTopic
from flowbus.broker.group_coordinator import GroupConfig
from flowbus.clock import ManualClock

pytestmark = pytest.mark.timeout(60)
PARTITIONS = 200


def test_the_periodic_maintenance_pass_yields_between_partitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> tuple[int, int]:
        config = BrokerConfig(data_dir=tmp_path / "data", groups=GroupConfig(group_initial_rebalance_delay_ms=0))
        core = BrokerCore(config, clock=ManualClock(now_ms=1_700_000_000_000))
        await core.start()
        try:
            created = await core.create_topics([NewTopic("wide", PARTITIONS, 1, {})], validate_only=False)
            assert created[0].error_code == 0
            turns = 0
            stop = False

            async def count_turns() -> None:
                nonlocal turns
                while not stop:
                    turns += 1
                    await asyncio.sleep(0)

            counter = asyncio.create_task(count_turns())
            await asyncio.sleep(0)
            monkeypatch.setattr(core_module, "LOOP_SLICE_S", 0.0)
            before = turns
            await core._tick_sliced()
            during = turns - before
            monkeypatch.setattr(core_module, "LOOP_SLICE_S", 1.0)
            before = turns
            await core._tick_sliced()  # a generous slice: the pass runs in one turn
            unsliced = turns - before
            stop = True
            await counter
            return during, unsliced
        finally:
            await core.close()

    during, unsliced = asyncio.run(main())
    # One share per partition (of the new topic and the internal ones) for retention and one for
    # idle segments: at least two turns a partition went to the other task.
    assert during >= 2 * PARTITIONS, during
    assert unsliced <= 1, unsliced
