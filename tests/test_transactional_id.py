"""Transactional id slots (:mod:`flowbus.transactional_id`): one per worker, the lowest free one,
given back by the kernel when its process dies, and told apart from a clean release so a starting
worker knows which dead workers may have left a transaction open."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowbus.app_errors import ConfigurationError
from flowbus.transactional_id import (
    SLOTS_MAX,
    claim_slot,
    process_transactional_id,
    slot_transactional_id,
    take_orphans,
)

pytestmark = pytest.mark.timeout(60)

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from flowbus.transactional_id import claim_slot
    slot = claim_slot(sys.argv[1], Path(sys.argv[2]), host="h")
    print(slot.index, flush=True)
    time.sleep(600)
    """
)


class Holders:
    """Child processes that each claim a slot and hold it until killed."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, app_id: str = "app") -> tuple[subprocess.Popen[str], int]:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, app_id, str(self.state_dir)],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until the child holds its slot
        assert line.strip(), f"the holder exited with {process.wait()}"
        return process, int(line)

    @staticmethod
    def kill(process: subprocess.Popen[str]) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                self.kill(process)


@pytest.fixture
def holders(tmp_path: Path) -> Iterator[Holders]:
    h = Holders(tmp_path / "state")
    yield h
    h.close()


def test_each_claim_gets_the_lowest_free_slot_and_its_own_id(tmp_path: Path) -> None:
    a, b, c = (claim_slot("app", tmp_path, host="h") for _ in range(3))
    assert [a.index, b.index, c.index] == [0, 1, 2]
    assert len({a.transactional_id, b.transactional_id, c.transactional_id}) == 3
    assert a.transactional_id == slot_transactional_id("app", tmp_path, 0, host="h")
    assert a.transactional_id.startswith("app-h-") and a.transactional_id.endswith("-0")
    b.release()
    again = claim_slot("app", tmp_path, host="h")
    assert again.index == 1 and again.transactional_id == b.transactional_id
    assert not again.orphaned, "released cleanly: nothing can be left open"
    for slot in (a, again, c):
        slot.release()


def test_ids_differ_between_state_directories_hosts_and_apps(tmp_path: Path) -> None:
    ids = {
        slot_transactional_id("app", tmp_path / "one", 0, host="h"),
        slot_transactional_id("app", tmp_path / "two", 0, host="h"),
        slot_transactional_id("app", tmp_path / "one", 0, host="other"),
        slot_transactional_id("other", tmp_path / "one", 0, host="h"),
    }
    assert len(ids) == 4
    # The same directory named two ways is one directory.
    assert slot_transactional_id("app", tmp_path / "one" / ".." / "one", 0) == slot_transactional_id("app", tmp_path / "one", 0)
    assert process_transactional_id("app") != process_transactional_id("app")


def test_a_killed_holders_slot_is_free_at_once_and_marked_orphaned(holders: Holders) -> None:
    first, index = holders.start()
    assert index == 0
    assert claim_slot("app", holders.state_dir, host="h").index == 1, "slot 0 is held"
    holders.kill(first)
    taken = claim_slot("app", holders.state_dir, host="h")
    assert taken.index == 0, "the dead worker's slot, so its restart ends its transaction"
    assert taken.orphaned


def test_orphans_are_the_dead_holders_slots_only(holders: Holders) -> None:
    dead_a, a = holders.start()
    dead_b, b = holders.start()
    alive, c = holders.start()
    clean = claim_slot("app", holders.state_dir, host="h")
    assert [a, b, c, clean.index] == [0, 1, 2, 3]
    clean.release()
    holders.kill(dead_a)
    holders.kill(dead_b)
    mine = claim_slot("app", holders.state_dir, host="h")
    assert mine.index == 0 and mine.orphaned
    orphans = take_orphans("app", holders.state_dir, skip={mine.index}, host="h")
    assert [o.index for o in orphans] == [1], "2 is alive, 3 was released cleanly"
    assert orphans[0].transactional_id == slot_transactional_id("app", holders.state_dir, 1, host="h")
    for orphan in orphans:
        orphan.release()  # its transaction ended: clean now
    assert take_orphans("app", holders.state_dir, skip={mine.index}, host="h") == []
    assert alive.poll() is None


def test_running_out_of_slots_is_a_configuration_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flowbus.transactional_id as module

    monkeypatch.setattr(module, "SLOTS_MAX", 2)
    held = [module.claim_slot("app", tmp_path), module.claim_slot("app", tmp_path)]
    with pytest.raises(ConfigurationError, match="transactional_id"):
        module.claim_slot("app", tmp_path)
    for slot in held:
        slot.release()
    assert SLOTS_MAX >= 64
