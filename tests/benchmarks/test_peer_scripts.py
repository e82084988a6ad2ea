"""The flowbus side of ``benchmarks/peers/`` runs, on a small input, and counts right.

These scripts are what docs/benchmarks.md's peer ratios come from; they run outside the suite
otherwise, so a change to how an app starts (``app.main`` taking the command line) broke them
unnoticed once. Nothing here is timed: each script must finish, print its figure line, and
its counts must equal what was written.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker_process import BrokerProcess

PEERS = Path(__file__).resolve().parents[2] / "benchmarks" / "peers"
sys.path.insert(0, str(PEERS))

import run_peers
import run_window_peers

pytestmark = pytest.mark.timeout(180)

SCRIPT_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    with BrokerProcess(tmp_path_factory.mktemp("peers") / "data") as process:
        yield process


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, str(PEERS / name), *args], capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def words(broker: BrokerProcess) -> tuple[int, int]:
    """(events, distinct words) written to topic ``words``."""
    events = 3_000
    distinct, _ = run_peers.fill(broker.bootstrap, events, 200, seed=5)
    return events, distinct


@pytest.mark.parametrize("form", ["agent", "dataflow"])
def test_flowbus_wordcount_counts_every_event(
    broker: BrokerProcess, words: tuple[int, int], tmp_path: Path, form: str
) -> None:
    events, distinct = words
    app_id = f"peers-test-{uuid.uuid4().hex[:8]}"
    done = run_script("flowbus_wordcount.py", "--broker", broker.bootstrap, "--events", str(events),
                      "--state-dir", str(tmp_path / "state"), "--app-id", app_id, "--form", form)
    figure = run_peers.RESULT.search(done.stdout)
    assert figure is not None, done.stdout
    assert int(figure.group(2)) == events
    assert f"distinct_words={distinct} " in done.stderr
    assert run_peers.committed_total(broker.bootstrap, app_id) == events


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_flowbus_windows_emits_each_window_once_and_exact(
    broker: BrokerProcess, tmp_path: Path, guarantee: str
) -> None:
    clicks, users = 2_000, 40
    topic, out = f"clicks-{uuid.uuid4().hex[:8]}", f"counts-{uuid.uuid4().hex[:8]}"
    # fill() adds one click per user two windows after the last, so every real window closes.
    truth = run_window_peers.fill(broker.bootstrap, topic, clicks, users, seed=7)
    done = run_script("flowbus_windows.py", "--broker", broker.bootstrap, "--events", str(clicks + users),
                      "--topic", topic, "--out", out, "--guarantee", guarantee,
                      "--state-dir", str(tmp_path / "state"))
    figure = run_peers.RESULT.search(done.stdout)
    assert figure is not None, done.stdout
    assert int(figure.group(2)) == clicks + users
    last_start = max(start for _, start in truth) + run_window_peers.WINDOW_MS
    found = run_window_peers.compare(truth, run_window_peers.read_results(broker.bootstrap, out), last_start)
    assert found == {"windows": len(truth), "exact": len(truth), "wrong": 0, "repeated": 0, "missing": 0,
                     "extra": 0}


def test_the_summary_gives_each_flowbus_form_against_each_other_framework(capsys: pytest.CaptureFixture[str]) -> None:
    runs = [run_peers.Run(peer, 0, True, rate) for peer, rate in
            (("flowbus", 300.0), ("flowbus-dataflow", 1_000.0), ("faust", 5.0), ("quix", 100.0))]
    run_peers.summarize(runs, ["flowbus", "flowbus-dataflow", "faust", "quix"])
    ratios = [line.strip() for line in capsys.readouterr().out.splitlines() if "x (medians)" in line]
    assert ratios == ["flowbus / faust: 60.0x (medians)", "flowbus / quix: 3.0x (medians)",
                      "flowbus-dataflow / faust: 200.0x (medians)", "flowbus-dataflow / quix: 10.0x (medians)"]


def test_the_driver_defaults_to_a_million_events_and_faust_to_its_first_hundred_thousand() -> None:
    defaults = run_peers.parse_args([])
    assert (defaults.events, defaults.faust_events) == (1_000_000, 100_000)
    small = run_peers.parse_args(["--events", "20000"])
    assert (small.events, small.faust_events) == (20_000, 20_000)
