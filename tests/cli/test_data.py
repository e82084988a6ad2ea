"""``flowbus data check|repair`` on a data directory with damaged segments."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowbus.clock import ManualClock
from flowbus.log.manager import LogManager
from tests.cli.conftest import Invoke
from tests.log.conftest import START_MS, make_batch

pytestmark = pytest.mark.timeout(60)

BATCH_BYTES = len(make_batch(1, value_size=60))


def _damaged_data_dir(tmp_path: Path) -> Path:
    """Topic ``t``: 12 one-record batches, 3 per segment; the batch of offset 4 has a bad CRC."""
    data_dir = tmp_path / "data"
    manager = LogManager(data_dir, clock=ManualClock(now_ms=START_MS))
    try:
        manager.create_topic("t", 1, {"segment.bytes": "400"})
        manager.create_topic("fine", 1)
        for _ in range(12):
            manager.get_log("t", 0).append(make_batch(1, value_size=60))
    finally:
        manager.close()
    segment = data_dir / "t-0" / f"{3:020d}.log"
    data = bytearray(segment.read_bytes())
    data[BATCH_BYTES + 80] ^= 0xFF
    segment.write_bytes(bytes(data))
    return data_dir


def test_check_reports_damage_and_fails(tmp_path: Path, invoke: Invoke) -> None:
    data_dir = _damaged_data_dir(tmp_path)
    checked = invoke("data", "check", str(data_dir))
    assert checked.exit_code == 1, checked.output
    lines = checked.stdout.splitlines()
    assert lines[0].startswith(f"t-0: {3:020d}.log: bytes {BATCH_BYTES}..{2 * BATCH_BYTES} ({BATCH_BYTES} bytes)")
    assert "offsets 4..4" in lines[0] and "CRC mismatch" in lines[0]
    assert lines[1] == (
        f"checked 2 partitions, 5 segments, {12 * BATCH_BYTES} bytes: 1 damaged range in 1 partition; "
        "`flowbus data repair` cuts them out"
    )
    one = invoke("data", "check", str(data_dir / "fine-0"))
    assert one.exit_code == 0 and one.stdout == "checked 1 partition, 1 segment, 0 bytes: no damage\n"


def test_repair_cuts_the_damage_then_check_passes(tmp_path: Path, invoke: Invoke) -> None:
    data_dir = _damaged_data_dir(tmp_path)
    repaired = invoke("data", "repair", str(data_dir))
    assert repaired.exit_code == 0, repaired.output
    cut, summary = repaired.stdout.splitlines()
    assert cut.startswith(f"t-0: cut {3:020d}.log bytes {BATCH_BYTES}..{2 * BATCH_BYTES} ({BATCH_BYTES} bytes), offsets 4..4 (")
    assert "CRC mismatch" in cut
    assert summary == f"repaired 1 partition: cut 1 range, {BATCH_BYTES} bytes"
    checked = invoke("data", "check", str(data_dir))
    assert checked.exit_code == 0 and checked.stdout.endswith("no damage\n")
    again = invoke("data", "repair", str(data_dir))
    assert again.exit_code == 0 and again.stdout == "no damage: nothing to repair\n"


def test_repair_refuses_while_the_directory_is_open(tmp_path: Path, invoke: Invoke) -> None:
    data_dir = _damaged_data_dir(tmp_path)
    manager = LogManager(data_dir, clock=ManualClock(now_ms=START_MS))
    try:
        refused = invoke("data", "repair", str(data_dir))
        assert refused.exit_code == 1
        assert "in use by a running broker or worker" in refused.stderr
        checked = invoke("data", "check", str(data_dir))  # read-only: allowed, with a note
        assert checked.exit_code == 1 and "has" in checked.stderr and "open" in checked.stderr
    finally:
        manager.close()


def test_missing_or_wrong_directory(tmp_path: Path, invoke: Invoke) -> None:
    assert invoke("data", "check", str(tmp_path / "nope")).exit_code == 2
    (tmp_path / "empty").mkdir()
    wrong = invoke("data", "check", str(tmp_path / "empty"))
    assert wrong.exit_code == 1 and "not a flowbus data directory" in wrong.stderr
