"""Creating a topic of many partitions does not hold the broker's event loop (issue 10, item 4):
each partition's directory and files take ~1-3 ms, so one CreateTopics of thousands of
partitions held every other client for seconds. No timing here: with a zero-length slice, a
task counting event-loop turns proves the creation let others run between partitions.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from flowbus.broker import core as core_module
from flowbus.broker.config import BrokerConfig
from flowbus.broker.core import BrokerCore, NewTopic
from flowbus.log.errors import TopicExistsError
from flowbus.log.manager import LogManager
from flowbus.protocol.error_codes import ErrorCode

pytestmark = pytest.mark.timeout(60)
PARTITIONS = 120


def test_a_wide_topic_is_created_in_slices_and_its_name_is_taken_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        core = BrokerCore(BrokerConfig(data_dir=tmp_path / "data"))
        await core.start()
        try:
            monkeypatch.setattr(core_module, "LOOP_SLICE_S", 0.0)
            turns = 0
            stop = False

            async def count_turns() -> None:
                nonlocal turns
                while not stop:
                    turns += 1
                    await asyncio.sleep(0)

            counter = asyncio.create_task(count_turns())
            creation = asyncio.create_task(core.create_topics([NewTopic("wide", PARTITIONS, 1, {})]))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            # Under way: not visible yet, and a second creation of the name is refused.
            assert not core.logs.has_topic("wide")
            second = await core.create_topics([NewTopic("wide", 3, 1, {})])
            assert second[0].error_code == ErrorCode.TOPIC_ALREADY_EXISTS
            (first,) = await creation
            stop = True
            await counter
            assert first.error_code == ErrorCode.NONE
            assert core.logs.topic("wide").partitions == PARTITIONS
            assert turns >= PARTITIONS - 5, turns  # about one turn per partition went elsewhere
        finally:
            await core.close()

    asyncio.run(main())


def test_a_creation_abandoned_midway_leaves_nothing(tmp_path: Path) -> None:
    with LogManager(tmp_path) as manager:
        steps = manager.create_topic_steps("half", 10)
        for _ in range(4):
            next(steps)
        with pytest.raises(TopicExistsError):
            manager.create_topic("half", 2)
        steps.close()  # as when the creating task is cancelled
        assert not manager.has_topic("half")
        assert not any(p.name.startswith("half-") for p in tmp_path.iterdir())
        assert manager.create_topic("half", 2).partitions == 2  # the name is free again


def test_a_wide_topic_is_deleted_in_slices_and_cannot_be_created_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        core = BrokerCore(BrokerConfig(data_dir=tmp_path / "data"))
        await core.start()
        try:
            await core.create_topics([NewTopic("wide", PARTITIONS, 1, {})])
            monkeypatch.setattr(core_module, "LOOP_SLICE_S", 0.0)
            turns = 0
            stop = False

            async def count_turns() -> None:
                nonlocal turns
                while not stop:
                    turns += 1
                    await asyncio.sleep(0)

            counter = asyncio.create_task(count_turns())
            deletion = asyncio.create_task(core.delete_topics(["wide"]))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert not core.logs.has_topic("wide")  # forgotten at once
            again = await core.create_topics([NewTopic("wide", 1, 1, {})])
            assert again[0].error_code == ErrorCode.TOPIC_ALREADY_EXISTS
            assert "being deleted" in (again[0].error_message or "")
            assert await deletion == [("wide", ErrorCode.NONE)]
            stop = True
            await counter
            assert turns >= PARTITIONS - 5, turns
            assert not any(p.name.startswith("wide-") for p in (tmp_path / "data").iterdir())
            created = await core.create_topics([NewTopic("wide", 1, 1, {})])
            assert created[0].error_code == ErrorCode.NONE
        finally:
            await core.close()

    asyncio.run(main())


def test_a_deletion_abandoned_midway_still_removes_every_partition(tmp_path: Path) -> None:
    with LogManager(tmp_path) as manager:
        manager.create_topic("gone", 10)
        steps = manager.delete_topic_steps("gone")
        for _ in range(3):
            next(steps)
        steps.close()
        assert not any(p.name.startswith("gone-") for p in tmp_path.iterdir())
        assert manager.create_topic("gone", 1).partitions == 1


def test_a_second_creation_of_a_topic_under_way_is_answered_once_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two apps of one process create the same topic: the second answer, "already exists", comes
    once the topic does, and Metadata meanwhile says LEADER_NOT_AVAILABLE (clients retry)."""

    async def main() -> None:
        core = BrokerCore(BrokerConfig(data_dir=tmp_path / "data"))
        await core.start()
        try:
            monkeypatch.setattr(core_module, "LOOP_SLICE_S", 0.0)
            first = asyncio.create_task(core.create_topics([NewTopic("shared", PARTITIONS, 1, {})]))
            await asyncio.sleep(0)
            assert not core.logs.has_topic("shared")
            meta = await core.metadata(["shared"])
            assert meta.topics[0].error_code == ErrorCode.LEADER_NOT_AVAILABLE
            (second,) = await core.create_topics([NewTopic("shared", 4, 1, {})])
            assert second.error_code == ErrorCode.TOPIC_ALREADY_EXISTS
            assert core.logs.topic("shared").partitions == PARTITIONS  # it exists when answered
            ((created,),) = [await first]
            assert created.error_code == ErrorCode.NONE
        finally:
            await core.close()

    asyncio.run(main())
