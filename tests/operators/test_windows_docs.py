"""The code in docs/windows.md runs as written (in the test harness, on a temporary state dir)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from flowbus.clock import ManualClock

DOC = Path(__file__).resolve().parents[2] / "docs" / "windows.md"
S = 1_000


def python_blocks() -> list[str]:
    """The examples of the declarative windows (the faust-style section's example is run by
    tests/state/test_window_tables.py)."""
    text = DOC.read_text().split("## Windowed tables, faust style", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_windowed_count_examples(tmp_path: Path) -> None:
    blocks = python_blocks()
    assert len(blocks) == 2, "update this test when docs/windows.md gains or loses an example"
    namespace: dict[str, Any] = {}
    exec(blocks[0], namespace)  # noqa: S102 - our own documentation
    exec(blocks[1], namespace)  # noqa: S102 - the second example continues the first
    app = namespace["app"]
    app.state_dir = tmp_path
    app.clock = ManualClock(now_ms=1_700_000_000_000)
    clicks, per_user = namespace["clicks"], namespace["per_user"]
    user_clicks, late_clicks, counts = namespace["user_clicks"], namespace["late_clicks"], namespace["counts"]

    async def main() -> None:
        async with app.test_context() as t:
            for ts, user in [(1 * S, "ann"), (2 * S, "bob"), (11 * S, "ann"), (9 * S, "ann")]:
                await t.send(clicks, {"user": user}, key="k", timestamp_ms=ts, partition=0)
            assert t.items(per_user) == []  # 9 s is within the grace of [0, 10 s)
            await t.send(clicks, {"user": "ann"}, key="k", timestamp_ms=30 * S, partition=0)
            assert ("ann", {"start": 0, "end": 10 * S, "value": 2}) in t.items(per_user)

            await t.send(user_clicks, {}, key="ann", timestamp_ms=12 * S)
            await t.send(user_clicks, {}, key="ann", timestamp_ms=3 * S)  # [0, 10 s) closed: late
            assert t.items(late_clicks) == [("ann", {})]
            assert t.items(counts) == []  # [10 s, 20 s) is still open

    asyncio.run(main())
