"""The code in docs/state.md runs as written (in the test harness, on a temporary state dir)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "state.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_the_word_count_examples_count_words(tmp_path: Path) -> None:
    blocks = python_blocks()
    assert len(blocks) == 2, "update this test when docs/state.md gains or loses an example"
    namespace: dict[str, object] = {}
    exec(blocks[0], namespace)  # noqa: S102 - our own documentation
    exec(blocks[1], namespace)  # noqa: S102 - the second example continues the first
    app = namespace["app"]
    app.state_dir = tmp_path  # type: ignore[attr-defined]
    words, counts = namespace["words"], namespace["counts"]

    async def main() -> None:
        async with app.test_context() as t:  # type: ignore[attr-defined]
            for word in ["to", "be", "or", "not", "to", "be"]:
                await t.send(words, word, key=word, settle=False)
            await t.settle()
            assert dict(counts.items()) == {"to": 2, "be": 2, "or": 1, "not": 1}  # type: ignore[attr-defined]
            assert dict(app.tables["word-counts"].items()) == {"to": 2, "be": 2, "or": 1, "not": 1}  # type: ignore[attr-defined]
            assert [v for k, v in t.items("word-counts") if k == "to"] == [1, 2]

    asyncio.run(main())
