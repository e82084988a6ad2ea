"""PartitionLock against real processes: exclusion, bounded retries, release on SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowbus.state.errors import StoreLockedError
from flowbus.state.locking import LOCK_ATTEMPTS_MAX, LOCK_FILENAME, PartitionLock

# argv: directory, mode ("try" timeout_ms retry_interval_ms | "hold"). Exit 3 when locked out.
_CHILD = """
import sys, time
from pathlib import Path
from flowbus.state.errors import StoreLockedError
from flowbus.state.locking import PartitionLock
lock = PartitionLock(Path(sys.argv[1]))
if sys.argv[2] == "hold":
    lock.acquire(0)
    print("held", flush=True)
    sys.stdin.read()
    sys.exit(0)
started = time.monotonic()
try:
    lock.acquire(int(sys.argv[3]), retry_interval_ms=int(sys.argv[4]))
except StoreLockedError as exc:
    print(f"{time.monotonic() - started:.3f} {exc}", flush=True)
    sys.exit(3)
print("acquired", flush=True)
lock.release()
"""


def _try_in_child(directory: Path, timeout_ms: int, retry_interval_ms: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CHILD, str(directory), "try", str(timeout_ms), str(retry_interval_ms)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,  # the exit code is the answer
    )


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process holding the lock of ``tmp_path / "p"`` until killed."""
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path / "p"), "hold"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line == "held\n", line + (child.stderr.read() if child.stderr else "")
    yield child
    if child.poll() is None:
        child.kill()
    child.wait(timeout=10)


def test_another_process_waits_then_gives_up_naming_the_holder(tmp_path: Path) -> None:
    lock = PartitionLock(tmp_path / "p")
    lock.acquire(0)
    assert (tmp_path / "p" / LOCK_FILENAME).read_text() == f"{os.getpid()}\n"

    result = _try_in_child(tmp_path / "p", timeout_ms=200, retry_interval_ms=50)
    assert result.returncode == 3, result.stderr
    waited_s, message = result.stdout.split(" ", 1)
    assert 0.2 <= float(waited_s) < 1.5  # five attempts, 50 ms apart
    assert str(tmp_path / "p") in message and f"process {os.getpid()}" in message

    lock.release()
    lock.release()  # twice is fine
    result = _try_in_child(tmp_path / "p", timeout_ms=0, retry_interval_ms=50)
    assert (result.returncode, result.stdout) == (0, "acquired\n"), result.stderr


def test_the_lock_dies_with_its_process(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    lock = PartitionLock(tmp_path / "p")
    with pytest.raises(StoreLockedError, match=f"process {holder.pid}"):
        lock.acquire(0)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    lock.acquire(2_000, retry_interval_ms=10)
    assert lock.held
    lock.release()


def test_retries_are_bounded_and_sleep_is_injected(tmp_path: Path) -> None:
    holder = PartitionLock(tmp_path)
    holder.acquire(0)
    sleeps: list[float] = []
    with pytest.raises(StoreLockedError, match="11 attempts"):
        PartitionLock(tmp_path).acquire(1_000, retry_interval_ms=100, sleep=sleeps.append)
    assert sleeps == [0.1] * 10

    # A timeout far longer than attempts x interval stretches the interval instead.
    sleeps.clear()
    with pytest.raises(StoreLockedError, match=f"{LOCK_ATTEMPTS_MAX} attempts"):
        PartitionLock(tmp_path).acquire(3_600_000, retry_interval_ms=1, sleep=sleeps.append)
    assert len(sleeps) == LOCK_ATTEMPTS_MAX - 1
    assert sum(sleeps) == pytest.approx(3_600, rel=0.01)
    holder.release()


def test_one_process_two_locks(tmp_path: Path) -> None:
    """flock belongs to an open file: a second PartitionLock in the same process is refused too."""
    first = PartitionLock(tmp_path)
    first.acquire(0)
    with pytest.raises(RuntimeError):
        first.acquire(0)
    second = PartitionLock(tmp_path)
    with pytest.raises(StoreLockedError):
        second.acquire(0)
    assert second.holder_pid() == os.getpid()
    first.release()
    assert second.holder_pid() is None  # released locks leave no stale pid
    second.acquire(0)
    second.release()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        PartitionLock(tmp_path).acquire(-1)
    with pytest.raises(ValueError):
        PartitionLock(tmp_path).acquire(100, retry_interval_ms=0)


def test_acquire_async_waits_without_blocking_the_loop(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = PartitionLock(tmp_path)
        first.acquire(0)
        with pytest.raises(StoreLockedError):
            await PartitionLock(tmp_path).acquire_async(60, retry_interval_ms=20)
        # Released by another task while the second waits: it gets the lock.
        asyncio.get_running_loop().call_later(0.05, first.release)
        second = PartitionLock(tmp_path)
        started = time.monotonic()
        await second.acquire_async(2_000, retry_interval_ms=10)
        assert second.held and time.monotonic() - started < 1.0
        second.release()

    asyncio.run(scenario())
