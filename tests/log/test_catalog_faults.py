"""A catalog save that fails (the disk is full while writing ``catalog.json.tmp``) rolls the
manager back: what the caller sees in memory matches what is on disk, and what the next open
finds."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from flowbus.log import LogManager
from flowbus.log.catalog import CATALOG_FILE
from flowbus.log.errors import StorageError
from tests.log.conftest import make_batch


class CatalogWriteFaults:
    """Makes ``os.write`` fail with ENOSPC on the catalog's temporary file only, while armed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = False
        self.raised = 0
        real = os.write

        def write(fd: int, data: bytes | memoryview) -> int:
            if self.armed and os.readlink(f"/proc/self/fd/{fd}").endswith(CATALOG_FILE + ".tmp"):
                self.raised += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd, data)

        monkeypatch.setattr(os, "write", write)


def test_create_topic_rolls_back_when_the_catalog_cannot_be_saved(tmp_path: Path, monkeypatch) -> None:
    faults = CatalogWriteFaults(monkeypatch)
    with LogManager(tmp_path) as manager:
        manager.create_topic("kept", 1)
        on_disk = (tmp_path / CATALOG_FILE).read_bytes()
        faults.armed = True
        with pytest.raises(StorageError, match="nothing was kept"):
            manager.create_topic("lost", 3)
        faults.armed = False
        assert faults.raised == 1
        assert sorted(manager.topics()) == ["kept"]
        assert not any(tmp_path.glob("lost-*")), "the new partition directories are removed"
        assert (tmp_path / CATALOG_FILE).read_bytes() == on_disk
        manager.create_topic("lost", 3)  # the name is free again
    with LogManager(tmp_path) as manager:
        assert sorted(manager.topics()) == ["kept", "lost"]


def test_alter_config_rolls_back_when_the_catalog_cannot_be_saved(tmp_path: Path, monkeypatch) -> None:
    faults = CatalogWriteFaults(monkeypatch)
    with LogManager(tmp_path) as manager:
        manager.create_topic("t", 2, {"retention.ms": "1000"})
        on_disk = (tmp_path / CATALOG_FILE).read_bytes()
        faults.armed = True
        with pytest.raises(OSError):
            manager.alter_topic_config("t", {"retention.ms": "5000", "cleanup.policy": "compact"})
        faults.armed = False
        assert faults.raised == 1
        config = manager.topic("t").config
        assert config.retention_ms == 1000 and not config.is_compacted
        assert manager.get_log("t", 1).config.retention_ms == 1000, "open partitions keep the old config"
        assert (tmp_path / CATALOG_FILE).read_bytes() == on_disk
    with LogManager(tmp_path) as manager:
        assert manager.topic("t").config.retention_ms == 1000


def test_delete_topic_keeps_the_topic_when_the_catalog_cannot_be_saved(tmp_path: Path, monkeypatch) -> None:
    faults = CatalogWriteFaults(monkeypatch)
    with LogManager(tmp_path) as manager:
        manager.create_topic("t", 1)
        manager.get_log("t", 0).append(make_batch(2))
        faults.armed = True
        with pytest.raises(OSError):
            manager.delete_topic("t")
        faults.armed = False
        assert faults.raised == 1
        # Nothing was deleted on disk, so the manager must still serve the topic.
        assert "t" in manager.topics()
        assert manager.get_log("t", 0).log_end_offset == 2
    with LogManager(tmp_path) as manager:
        assert manager.get_log("t", 0).log_end_offset == 2
