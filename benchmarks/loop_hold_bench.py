"""How long one big request holds the broker's event loop (issue 10, item 4).

Starts its own ``flowbus broker`` process on a free 127.0.0.1 port with a temporary data
directory, creates one topic of :data:`PARTITIONS` partitions and :data:`METADATA_TOPICS`
one-partition topics, then for each request kind at the element budget
(``codec.MAX_REQUEST_ELEMENTS``: 10,000 array elements; Metadata 2,000 topics) sends it
``--repeats`` times, one after the other, from one connection while a second connection does
ApiVersions round trips back to back. The broker serves both from one event loop, so the second
client's slowest round trip is about the longest slice one big request holds the loop.

Printed per kind: the big request's own round trip (median, max) and the probe's p50 / p99 / max
round trip while the big requests ran. Requests are built with the project's own encoder
(``flowbus.protocol.codec.encode_request``), as raw frames on plain sockets. Run::

    python benchmarks/loop_hold_bench.py [--repeats 10] [--runs 1] [--kinds fetch,metadata]

``--profile KIND`` instead decodes, handles and encodes one request of that kind in-process
(a ``BrokerCore`` on a temporary directory) under cProfile and prints where the time goes.

A partition is named several times in one request (10 topic entries of 999 partitions each,
all of the same topic): the broker does the full per-partition work for each entry, and one
topic of 1,000 partitions needs 3,000 file descriptors where 10,000 would need 30,000.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flowbus.protocol.api import ApiKey
from flowbus.protocol.codec import decode_response, encode_request
from flowbus.records.builder import BatchBuilder
from tests.support.broker_process import DEFAULT_EXTRA_ARGS, BrokerProcess

#: Partitions of the one big topic. Few on purpose: the broker's periodic log maintenance visits
#: every open partition each 100 ms in one turn (~5 us each), which would hide what a request does.
PARTITIONS = 100
TOPIC = "loop-hold"
#: Topic entries per request, each naming ``PARTITIONS_PER_ENTRY`` partitions: 100 + 9,900 =
#: 10,000 elements, exactly the default budget of ``codec.MAX_REQUEST_ELEMENTS``.
TOPIC_ENTRIES = 100
PARTITIONS_PER_ENTRY = 99
#: Metadata's budget is 2,000 topics (``codec.MAX_REQUEST_ELEMENTS[METADATA]``).
METADATA_TOPICS = 2_000
METADATA_TOPIC_PREFIX = "loop-hold-meta-"
#: CreateTopics' budget is 1,000 elements; half of it per request leaves room.
CREATE_TOPICS_PER_REQUEST = 500
GROUP = "loop-hold-group"
SOCKET_TIMEOUT_S = 60.0

VERSIONS = {
    ApiKey.API_VERSIONS: 3,
    ApiKey.FETCH: 12,
    ApiKey.LIST_OFFSETS: 7,
    ApiKey.OFFSET_COMMIT: 8,
    ApiKey.PRODUCE: 9,
    ApiKey.METADATA: 12,
    ApiKey.CREATE_TOPICS: 5,
    ApiKey.DELETE_TOPICS: 5,
}


# -- raw requests ----------------------------------------------------------------------------

def connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=SOCKET_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise ConnectionError("closed by the broker")
        chunks += chunk
    return bytes(chunks)


def round_trip(sock: socket.socket, api_key: ApiKey, correlation_id: int, body: dict[str, Any]) -> dict[str, Any]:
    """Send one request and read its response body (raises if the broker closed the socket)."""
    version = VERSIONS[api_key]
    sock.sendall(encode_request(int(api_key), version, correlation_id, "loop-hold", body))
    (size,) = struct.unpack(">i", recv_exactly(sock, 4))
    got, response = decode_response(int(api_key), version, recv_exactly(sock, size))
    if got != correlation_id:
        raise AssertionError(f"correlation id {got}, expected {correlation_id}")
    return response


def small_batch() -> bytes:
    """One record batch of one 10-byte record (what a producer of many partitions sends each).

    Stamped now: an old timestamp would make the broker roll and delete segments by age.
    """
    builder = BatchBuilder()
    builder.append(b"k", b"0123456789", timestamp_ms=int(time.time() * 1000))
    return builder.build()


def _entries(partition_body: Callable[[int], dict[str, Any]], name_key: str,
             partitions_key: str) -> list[dict[str, Any]]:
    return [{name_key: TOPIC, partitions_key: [partition_body(p) for p in range(PARTITIONS_PER_ENTRY)]}
            for _ in range(TOPIC_ENTRIES)]


def fetch_body() -> dict[str, Any]:
    """Fetch v12 of 9,990 partitions from offset 0, no waiting, small per-partition limit."""
    return {"max_wait_ms": 0, "min_bytes": 0, "max_bytes": 50 * 1024 * 1024, "isolation_level": 0,
            "topics": _entries(lambda p: {"partition": p, "fetch_offset": 0, "partition_max_bytes": 1024},
                               "topic", "partitions")}


def list_offsets_body() -> dict[str, Any]:
    return {"replica_id": -1, "isolation_level": 0,
            "topics": _entries(lambda p: {"partition_index": p, "timestamp": -1}, "name", "partitions")}


def offset_commit_body() -> dict[str, Any]:
    """A simple commit (generation -1, no member): allowed for a group with no members."""
    return {"group_id": GROUP, "generation_id_or_member_epoch": -1, "member_id": "",
            "topics": _entries(lambda p: {"partition_index": p, "committed_offset": 1,
                                          "committed_metadata": ""}, "name", "partitions")}


def produce_body() -> dict[str, Any]:
    batch = small_batch()
    return {"transactional_id": None, "acks": 1, "timeout_ms": 30_000,
            "topic_data": _entries(lambda p: {"index": p, "records": batch}, "name", "partition_data")}


def metadata_body() -> dict[str, Any]:
    return {"topics": [{"topic_id": b"\x00" * 16, "name": f"{METADATA_TOPIC_PREFIX}{i:04d}"}
                       for i in range(METADATA_TOPICS)],
            "allow_auto_topic_creation": False, "include_topic_authorized_operations": False}


def _partition_errors(response: dict[str, Any], topics_key: str, partitions_key: str) -> list[int]:
    return [p["error_code"] for t in response[topics_key] for p in t[partitions_key]]


def check_entries(response: dict[str, Any], topics_key: str, partitions_key: str) -> None:
    """Every partition entry answered, without error."""
    errors = _partition_errors(response, topics_key, partitions_key)
    if len(errors) != TOPIC_ENTRIES * PARTITIONS_PER_ENTRY or any(errors):
        raise AssertionError(f"{len(errors)} partition answers, errors {sorted(set(errors))}")


def check_metadata(response: dict[str, Any]) -> None:
    errors = [t["error_code"] for t in response["topics"]]
    if len(errors) != METADATA_TOPICS or any(errors):
        raise AssertionError(f"{len(errors)} topic answers, errors {sorted(set(errors))}")


#: kind -> (api key, body builder, response check).
KINDS: dict[str, tuple[ApiKey, Callable[[], dict[str, Any]], Callable[[dict[str, Any]], None]]] = {
    "fetch": (ApiKey.FETCH, fetch_body, lambda r: check_entries(r, "responses", "partitions")),
    "list_offsets": (ApiKey.LIST_OFFSETS, list_offsets_body, lambda r: check_entries(r, "topics", "partitions")),
    "offset_commit": (ApiKey.OFFSET_COMMIT, offset_commit_body, lambda r: check_entries(r, "topics", "partitions")),
    "produce": (ApiKey.PRODUCE, produce_body, lambda r: check_entries(r, "responses", "partition_responses")),
    "metadata": (ApiKey.METADATA, metadata_body, check_metadata),
}

#: Partitions of the topic the "create_delete" kind creates and deletes in each repeat.
WIDE_TOPIC_PARTITIONS = 1_000

#: Every kind the benchmark runs, in order: the broker alone first, Metadata (and the broker
#: alone again) last, once its 2,000 topics exist.
ALL_KINDS = ["idle", "fetch", "list_offsets", "offset_commit", "produce", "create_delete", "metadata",
             "idle_2000_topics"]


def create_and_delete_wide_topic(sock: socket.socket, correlation_id: int) -> None:
    """CreateTopics of one topic of WIDE_TOPIC_PARTITIONS partitions, then DeleteTopics of it."""
    name = f"loop-hold-wide-{correlation_id}"
    created = round_trip(sock, ApiKey.CREATE_TOPICS, 2 * correlation_id, {
        "topics": [{"name": name, "num_partitions": WIDE_TOPIC_PARTITIONS, "replication_factor": 1,
                    "assignments": [], "configs": []}], "timeout_ms": 60_000, "validate_only": False})
    if created["topics"][0]["error_code"]:
        raise AssertionError(f"creating {name}: {created['topics'][0]}")
    deleted = round_trip(sock, ApiKey.DELETE_TOPICS, 2 * correlation_id + 1,
                         {"topic_names": [name], "timeout_ms": 60_000})
    if deleted["responses"][0]["error_code"]:
        raise AssertionError(f"deleting {name}: {deleted['responses'][0]}")


def create_topics(sock: socket.socket, topics: list[tuple[str, int]]) -> None:
    """``(name, partitions)`` topics, in CreateTopics requests within its budget."""
    for start in range(0, len(topics), CREATE_TOPICS_PER_REQUEST):
        chunk = topics[start:start + CREATE_TOPICS_PER_REQUEST]
        body = {"topics": [{"name": name, "num_partitions": count, "replication_factor": 1,
                            "assignments": [], "configs": []} for name, count in chunk],
                "timeout_ms": 60_000, "validate_only": False}
        response = round_trip(sock, ApiKey.CREATE_TOPICS, start + 1, body)
        errors = {t["error_code"] for t in response["topics"]} - {0, 36}  # 36: already exists
        if errors:
            raise AssertionError(f"CreateTopics failed: {response['topics'][:3]}")


# -- the probe -------------------------------------------------------------------------------

class Probe:
    """A second client doing ApiVersions round trips back to back, in a process of its own.

    Records ``(started, seconds)`` per round trip (``time.perf_counter()``, the system's monotonic
    clock, the same in every process); :meth:`between` keeps those that started in a window, so
    only the time the big requests ran is counted. A process, not a thread: in this process the
    big requests' answers are decoded (a Fetch of 9,900 partitions takes ~10-20 ms), and a probe
    thread waiting for the interpreter meanwhile would add that to the broker's figure.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.samples: list[tuple[float, float]] = []
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._stop = context.Event()
        self._ready = context.Event()
        self._receiver, sender = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_probe_main, args=(host, port, self._stop, self._ready, sender), name="probe", daemon=True)

    def start(self) -> Probe:
        self._process.start()
        if not self._ready.wait(SOCKET_TIMEOUT_S):
            raise RuntimeError("the probe client did not connect")
        return self

    def stop(self) -> None:
        self._stop.set()
        if not self._receiver.poll(SOCKET_TIMEOUT_S):
            self._process.kill()
            raise RuntimeError("the probe client did not report")
        samples, error = self._receiver.recv()
        self._process.join(SOCKET_TIMEOUT_S)
        self.samples = samples
        if error is not None:
            raise RuntimeError(f"the probe client failed: {error}")

    def between(self, start: float, end: float) -> list[float]:
        return [seconds for started, seconds in list(self.samples) if start <= started <= end]


def _probe_main(host: str, port: int, stop: Any, ready: Any, sender: Any) -> None:
    """The probe process: round trips until ``stop`` is set, then sends ``(samples, error)``."""
    samples: list[tuple[float, float]] = []
    error: str | None = None
    body = {"client_software_name": "probe", "client_software_version": "1"}
    try:
        with connect(host, port) as sock:
            ready.set()
            for correlation_id in range(1, 10_000_000):  # bounded; stopped long before
                if stop.is_set():
                    break
                started = time.perf_counter()
                round_trip(sock, ApiKey.API_VERSIONS, correlation_id, body)
                samples.append((started, time.perf_counter() - started))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        error = repr(exc)
    sender.send((samples, error))
    sender.close()


# -- measuring -------------------------------------------------------------------------------

def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


#: How long the "idle" kind watches the probe alone (the broker's own periodic work).
IDLE_S = 2.0


def measure_kind(host: str, port: int, kind: str, repeats: int) -> dict[str, float]:
    """Send ``repeats`` big requests of ``kind`` while the probe runs; figures in ms.

    Kind ``idle`` sends nothing for :data:`IDLE_S`: the probe's figures then show what the
    broker's periodic maintenance costs the other clients without any big request.
    """
    big_ms: list[float] = []
    probe = Probe(host, port).start()
    try:
        time.sleep(0.1)  # the probe is going before the first big request
        window_start = time.perf_counter()
        if kind.startswith("idle"):
            time.sleep(IDLE_S)
            big_ms.append(0.0)
        elif kind == "create_delete":
            with connect(host, port) as sock:
                for correlation_id in range(1, repeats + 1):
                    started = time.perf_counter()
                    create_and_delete_wide_topic(sock, correlation_id)
                    big_ms.append((time.perf_counter() - started) * 1000)
        else:
            api_key, build, check = KINDS[kind]
            body = build()
            with connect(host, port) as sock:
                for correlation_id in range(1, repeats + 1):
                    started = time.perf_counter()
                    check(round_trip(sock, api_key, correlation_id, body))
                    big_ms.append((time.perf_counter() - started) * 1000)
        window_end = time.perf_counter()
    finally:
        probe.stop()
    probe_ms = [s * 1000 for s in probe.between(window_start, window_end)]
    if not probe_ms:
        raise AssertionError(f"{kind}: the probe completed no round trip while the big requests ran")
    return {"big_median_ms": statistics.median(big_ms), "big_max_ms": max(big_ms),
            "probe_p50_ms": percentile(probe_ms, 0.50), "probe_p99_ms": percentile(probe_ms, 0.99),
            "probe_max_ms": max(probe_ms), "probe_count": len(probe_ms)}


def run_broker(kinds: list[str], repeats: int, runs: int) -> dict[str, list[dict[str, float]]]:
    figures: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="loop-hold-") as tmp, \
            BrokerProcess(Path(tmp) / "data", extra_args=DEFAULT_EXTRA_ARGS, log_level="warning") as broker:
        with connect(broker.host, broker.port) as sock:
            create_topics(sock, [(TOPIC, PARTITIONS)])
        metadata_topics_created = False
        for run in range(runs):
            for kind in kinds:
                if kind in ("metadata", "idle_2000_topics") and not metadata_topics_created:
                    # Created only now: 2,000 more partitions make the periodic maintenance
                    # (every partition each 100 ms) cost ~10 ms a turn, which the kinds before
                    # would otherwise see too. "idle_2000_topics" shows that cost.
                    started = time.perf_counter()
                    with connect(broker.host, broker.port) as sock:
                        create_topics(sock, [(f"{METADATA_TOPIC_PREFIX}{i:04d}", 1) for i in range(METADATA_TOPICS)])
                    print(f"created {METADATA_TOPICS} topics in {time.perf_counter() - started:.1f} s")
                    metadata_topics_created = True
                try:
                    figures[kind].append(measure_kind(broker.host, broker.port, kind, repeats))
                except Exception:
                    print(f"{kind} failed; the broker's log ends with:\n{broker.log_tail(20)}")
                    raise
                f = figures[kind][-1]
                print(f"run {run + 1} {kind:<16} big request median {f['big_median_ms']:6.1f} ms "
                      f"max {f['big_max_ms']:6.1f} | other client p50 {f['probe_p50_ms']:5.2f} "
                      f"p99 {f['probe_p99_ms']:6.2f} max {f['probe_max_ms']:6.2f} ms "
                      f"({f['probe_count']:.0f} round trips)", flush=True)
    return figures


def summarize(figures: dict[str, list[dict[str, float]]]) -> None:
    print()
    print("kind              big request ms (median of runs)   other client max ms: median [range]  p99 median")
    for kind, runs in figures.items():
        maxima = [f["probe_max_ms"] for f in runs]
        print(f"{kind:<17} {statistics.median(f['big_median_ms'] for f in runs):8.1f}"
              f"{'':26}{statistics.median(maxima):8.2f} [{min(maxima):.2f}-{max(maxima):.2f}]"
              f"{statistics.median(f['probe_p99_ms'] for f in runs):10.2f}")


# -- where the time goes ---------------------------------------------------------------------

def profile(kind: str) -> None:
    """Decode, handle and encode one request of ``kind`` in-process, timed and under cProfile."""
    import asyncio
    import cProfile
    import pstats

    from flowbus.broker.config import BrokerConfig
    from flowbus.broker.core import BrokerCore, NewTopic
    from flowbus.broker.handlers import ConnectionInfo, Handlers
    from flowbus.protocol.codec import decode_request, encode_response

    api_key, build, check = KINDS[kind]
    frame = encode_request(int(api_key), VERSIONS[api_key], 1, "loop-hold", build())[4:]

    async def main(data_dir: Path) -> None:
        core = BrokerCore(BrokerConfig(data_dir=data_dir))
        await core.start()
        await core.wait_loaded()  # else OffsetCommit answers COORDINATOR_LOAD_IN_PROGRESS at once
        try:
            await core.create_topics([NewTopic(TOPIC, PARTITIONS, 1, {})])
            if kind == "metadata":
                await core.create_topics([NewTopic(f"{METADATA_TOPIC_PREFIX}{i:04d}", 1, 1, {})
                                          for i in range(METADATA_TOPICS)])
            handlers = Handlers(core)
            info = ConnectionInfo("/127.0.0.1")
            for attempt in range(3):
                t0 = time.perf_counter()
                request = decode_request(frame)
                t1 = time.perf_counter()
                body = await handlers.handle(request.header, request.body, info)
                t2 = time.perf_counter()
                assert body is not None
                check(body)
                encode_response(request.header, body)
                t3 = time.perf_counter()
                print(f"{kind} #{attempt + 1}: decode {(t1 - t0) * 1000:.1f} ms, handler "
                      f"{(t2 - t1) * 1000:.1f} ms, encode {(t3 - t2) * 1000:.1f} ms")
            profiler = cProfile.Profile()
            profiler.enable()
            request = decode_request(frame)
            body = await handlers.handle(request.header, request.body, info)
            assert body is not None
            encode_response(request.header, body)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        finally:
            await core.close()

    with tempfile.TemporaryDirectory(prefix="loop-hold-profile-") as tmp:
        asyncio.run(main(Path(tmp)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="big requests per kind and run")
    parser.add_argument("--runs", type=int, default=1, help="runs per kind (median and range)")
    parser.add_argument("--kinds", default=",".join(ALL_KINDS), help="comma-separated: " + ", ".join(ALL_KINDS))
    parser.add_argument("--profile", choices=list(KINDS), help="profile one kind in-process instead")
    args = parser.parse_args()
    if args.profile:
        profile(args.profile)
        return
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(ALL_KINDS)
    if unknown:
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    summarize(run_broker(kinds, args.repeats, args.runs))


if __name__ == "__main__":
    main()
