"""``flowbus broker`` freezes the objects of partitions created after start-up (issue 10, item 4):
a full garbage collection walked them on the event loop, 12-37 ms with 2,000 partitions."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from flowbus.broker.config import BrokerConfig
from flowbus.broker.core import BrokerCore, NewTopic
from flowbus.broker.runner import freeze_new_partitions

pytestmark = pytest.mark.timeout(60)


def test_partitions_created_after_start_are_frozen_and_nothing_else_is(tmp_path: Path) -> None:
    async def main() -> tuple[int, int, int]:
        core = BrokerCore(BrokerConfig(data_dir=tmp_path / "data"))
        await core.start()
        freezer = asyncio.create_task(freeze_new_partitions(core, interval_s=0.01))
        try:
            await asyncio.sleep(0.05)
            quiet = gc.get_freeze_count()  # nothing created: no freeze
            await core.create_topics([NewTopic(f"t{i}", 2, 1, {}) for i in range(20)], validate_only=False)
            plog = core.logs.get_log("t0", 0)
            for _ in range(100):
                await asyncio.sleep(0.01)
                if gc.get_freeze_count() > quiet:
                    break
            frozen = gc.get_freeze_count()
            # Frozen objects are in no generation: a collection no longer walks the new log.
            assert gc.is_tracked(plog) and not any(o is plog for o in gc.get_objects())
            return quiet, frozen, core.logs.partition_count()
        finally:
            freezer.cancel()
            await core.close()

    gc.unfreeze()
    try:
        quiet, frozen, partitions = asyncio.run(main())
    finally:
        gc.unfreeze()  # leave the test process as it was
    assert quiet == 0
    assert frozen > 0
    assert partitions >= 40


def test_a_broker_process_runs_full_collections_a_thousand_gen1_collections_apart(tmp_path: Path) -> None:
    """``flowbus broker`` (the runner) sets the third GC threshold: checked on a real process
    through a tiny helper script that runs the broker's runner and prints the thresholds."""
    import subprocess
    import sys
    import textwrap

    from tests.support.broker_process import free_port

    script = textwrap.dedent(f"""
        import asyncio, gc
        from pathlib import Path
        from flowbus.broker.config import BrokerConfig
        from flowbus.broker.runner import run_broker

        async def main():
            stop = asyncio.Event()
            async def report():
                await asyncio.sleep(0.5)
                print("thresholds", gc.get_threshold(), flush=True)
                stop.set()
            asyncio.get_running_loop().create_task(report())
            await run_broker(BrokerConfig(data_dir=Path({str(tmp_path / 'data')!r})),
                             listen_host="127.0.0.1", listen_port={free_port()}, stop=stop)
        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "thresholds (700, 10, 1000)" in out.stdout, out.stdout
