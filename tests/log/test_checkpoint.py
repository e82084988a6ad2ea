from __future__ import annotations

from pathlib import Path

from flowbus.log.checkpoint import (
    CHECKPOINT_FILE,
    PartitionCheckpoint,
    read_checkpoint,
    write_checkpoint,
)


def test_round_trip(tmp_path: Path) -> None:
    checkpoint = PartitionCheckpoint(120, 100, 4096, 0, 50)
    write_checkpoint(tmp_path, checkpoint, durable=True)
    assert read_checkpoint(tmp_path) == checkpoint


def test_missing_or_damaged_reads_as_none(tmp_path: Path) -> None:
    assert read_checkpoint(tmp_path) is None
    write_checkpoint(tmp_path, PartitionCheckpoint(120, 100, 4096, 0, 50))
    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes().replace(b"4096", b"4097"))
    assert read_checkpoint(tmp_path) is None
    path.write_bytes(b"\x00" * 10)
    assert read_checkpoint(tmp_path) is None
