"""A closed or deleted partition log leaves no reference cycle: reference counting frees it.

The broker freezes long-lived objects out of the cyclic collector's reach (``gc.freeze`` in
``flowbus broker``); a closed log caught in a cycle would then never be freed.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowbus.log.manager import LogManager
from flowbus.log.partition_log import PartitionLog
from tests.log.conftest import make_batch


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """What the cyclic collector finds unreachable, kept for inspection."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def logs_in(garbage: list[object]) -> list[object]:
    return [o for o in garbage if isinstance(o, PartitionLog)]


def test_a_deleted_topics_logs_are_freed_without_the_cyclic_collector(
    tmp_path: Path, saved_garbage: list[object]
) -> None:
    with LogManager(tmp_path) as manager:
        manager.create_topic("gone", 3, {"segment.bytes": "200"})
        for partition in range(3):
            plog = manager.get_log("gone", partition)
            for _ in range(5):
                plog.append(make_batch(2))  # several segments, some reopened by reads below
            plog.read(0, 10_000)
        del plog
        manager.delete_topic("gone")
        gc.collect()
        assert logs_in(saved_garbage) == []


def test_a_closed_log_is_freed_without_the_cyclic_collector(
    tmp_path: Path, saved_garbage: list[object]
) -> None:
    manager = LogManager(tmp_path)
    manager.create_topic("t", 2, {"segment.bytes": "200"})
    for partition in range(2):
        plog = manager.get_log("t", partition)
        for _ in range(5):
            plog.append(make_batch(2))
    del plog
    manager.close()
    del manager
    gc.collect()
    assert logs_in(saved_garbage) == []
