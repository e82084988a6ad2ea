"""Raw log lines parsed into structured records; lines that do not parse are dead-lettered.

Input lines look like ``2024-05-01T12:00:00Z INFO api GET /users 200 12ms``. A line that does not
match raises in the agent; the app's error policy (``dead_letter``) sends its original bytes to
``log-parser-dead-letters`` with headers naming the error, and the agent goes on::

    flowbus worker -A examples.pipelines.log_parsing:app --data-dir ./flowbus-data --listen 127.0.0.1:9092
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from flowbus import App, Stream

app = App("log-parser", error_policy="dead_letter")

LINE = re.compile(
    r"^(?P<ts>\S+) (?P<level>DEBUG|INFO|WARN|ERROR) (?P<service>[\w.-]+) "
    r"(?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}) (?P<duration_ms>\d+)ms$"
)


@dataclass
class LogRecord:
    timestamp: str
    level: str
    service: str
    method: str
    path: str
    status: int
    duration_ms: int


class UnparsableLine(ValueError):
    """The line is not in the access-log format."""


raw_lines = app.topic("raw-logs", value_type=str, value_serializer="raw")
records = app.topic("log-records", value_type=LogRecord)
errors = app.topic("log-errors", value_type=LogRecord)


def parse(line: str) -> LogRecord:
    match = LINE.match(line.strip())
    if match is None:
        raise UnparsableLine(f"not an access-log line: {line[:80]!r}")
    g = match.groupdict()
    return LogRecord(g["ts"], g["level"], g["service"], g["method"], g["path"], int(g["status"]), int(g["duration_ms"]))


@app.agent(raw_lines, sink=[records])
async def parse_lines(stream: Stream) -> AsyncIterator[LogRecord]:
    async for line in stream:
        record = parse(line)
        if record.status >= 500:
            errors.send_soon(record)
        yield record
