"""Tables in the test harness: the faust-style API, partition ownership, changelog contents."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flowbus import App
from flowbus.state.errors import PartitionNotOwnedError, ReadOnlyTableError
from flowbus.transports.partitioner import partition_for_key


def word_count_app(tmp_path: Path, **kwargs: object) -> tuple[App, object, object]:
    app = App("wc", broker="memory://", state_dir=tmp_path / "state", topic_partitions=4, **kwargs)  # type: ignore[arg-type]
    words = app.topic("words", key_type=str, value_type=str)
    counts = app.Table("counts", default=int, key_type=str, value_type=int)

    @app.agent(words)
    async def count(stream):  # type: ignore[no-untyped-def]
        async for word in stream:
            counts[word] += 1

    return app, words, counts


def test_agent_counts_words_in_a_table(tmp_path: Path) -> None:
    app, words, counts = word_count_app(tmp_path)

    async def main() -> None:
        async with app.test_context() as t:
            for word in ["a", "b", "a", "c", "a"]:
                await t.send(words, word, key=word, settle=False)
            await t.settle()
            assert counts["a"] == 3 and counts["b"] == 1 and counts["c"] == 1  # type: ignore[index]
            assert counts["zzz"] == 0  # type: ignore[index]  # the default, not stored
            assert "zzz" not in counts and "a" in counts  # type: ignore[operator]
            assert counts.get("nope", -1) == -1  # type: ignore[attr-defined]
            assert dict(counts.items()) == {"a": 3, "b": 1, "c": 1}  # type: ignore[attr-defined]
            assert len(counts) == 3  # type: ignore[arg-type]
            await t.commit()
            # Only the last value of each changed key reaches the changelog, in its partition.
            log = t.records("wc-counts-changelog")
            assert sorted((r.key, r.value) for r in log) == [(b"a", b"3"), (b"b", b"1"), (b"c", b"1")]
            for r in log:
                assert r.partition == partition_for_key(r.key, 4)
            await t.send(words, "a", key="a")
            await t.commit()
            assert [r.value for r in t.records("wc-counts-changelog") if r.key == b"a"] == [b"3", b"4"]

    asyncio.run(main())


def test_writing_a_key_of_another_partition_is_a_clear_error(tmp_path: Path) -> None:
    app = App("wc", broker="memory://", state_dir=tmp_path / "state", topic_partitions=4, error_policy="stop")
    words = app.topic("words", key_type=str, value_type=str)
    counts = app.Table("counts", default=int, key_type=str, value_type=int)

    @app.agent(words)
    async def count(stream):  # type: ignore[no-untyped-def]
        async for word in stream:
            counts[word.upper()] += 1  # re-keyed without a group_by

    key = next(k for k in ("a", "b", "c", "d", "e") if partition_for_key(k.encode(), 4) != partition_for_key(k.upper().encode(), 4))

    async def main() -> None:
        with pytest.raises(Exception) as failure:
            async with app.test_context() as t:
                await t.send(words, key, key=key)
        cause = failure.value.__cause__
        assert isinstance(cause, PartitionNotOwnedError)
        text = str(cause)
        assert f"key {key.upper()!r}" in text and "group_by" in text and "words[" in text

    asyncio.run(main())


def test_none_values_and_deletes(tmp_path: Path) -> None:
    app = App("kv", broker="memory://", state_dir=tmp_path / "state")
    ops = app.topic("ops", key_type=str)
    table = app.Table("kv", key_type=str)

    @app.agent(ops)
    async def apply(stream):  # type: ignore[no-untyped-def]
        async for key, op in stream.items():
            if op == "del":
                del table[key]
            else:
                table[key] = op

    async def main() -> None:
        async with app.test_context() as t:
            await t.send(ops, {"x": 1}, key="k")
            assert table["k"] == {"x": 1}
            await t.commit()
            await t.send(ops, "del", key="k")
            assert "k" not in table
            with pytest.raises(KeyError):
                table["k"]
            await t.commit()
            assert [r.value for r in t.records("kv-kv-changelog")] == [b'{"x":1}', None]
            with pytest.raises(ValueError, match="tombstone"):
                table["k"] = None

    asyncio.run(main())


def test_global_table_is_read_only(tmp_path: Path) -> None:
    app = App("g", broker="memory://", state_dir=tmp_path / "state")
    table = app.GlobalTable("countries", key_type=str)
    with pytest.raises(ReadOnlyTableError, match="changelog"):
        table["fr"] = "France"
