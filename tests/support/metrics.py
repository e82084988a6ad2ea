"""Scrape a ``/metrics`` endpoint and look samples up by name and labels (the metrics tests)."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT_S = 10.0
OPERATIONS_DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


class Samples:
    """Every sample of one scrape: ``samples.value("flowbus_broker_requests_total", api="Fetch")``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.families: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.families[family.name] = family.type
            for sample in family.samples:
                self.values[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; KeyError (listing the name's samples) when it is not there."""
        key = (name, frozenset(labels.items()))
        if key not in self.values:
            present = [dict(k[1]) for k in self.values if k[0] == name]
            raise KeyError(f"no sample {name}{labels}; samples of that name: {present}")
        return self.values[key]

    def get(self, name: str, default: float | None = None, **labels: str) -> float | None:
        return self.values.get((name, frozenset(labels.items())), default)

    def matching(self, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
        """Samples of ``name`` whose labels include ``labels``, by their label set."""
        wanted = set(labels.items())
        return {k[1]: v for k, v in self.values.items() if k[0] == name and wanted <= k[1]}

    def names(self) -> set[str]:
        return {k[0] for k in self.values}

    def exposed_families(self, prefix: str) -> set[str]:
        """Names of the metric families starting with ``prefix`` as they are exposed (a counter
        with its ``_total``; the parser strips it), samples or not."""
        return {name + ("_total" if kind == "counter" else "") for name, kind in self.families.items()
                if name.startswith(prefix)}


def documented_metrics(prefix: str) -> set[str]:
    """The metric names of docs/operations.md's tables (the first cell of a row) with ``prefix``."""
    return set(re.findall(rf"^\| `({prefix}[a-z_]+)`", OPERATIONS_DOC.read_text(), flags=re.MULTILINE))


def scrape(url: str) -> Samples:
    """GET ``url`` and parse Prometheus's text format."""
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
        assert response.status == 200, response.status
        content_type = response.headers.get("Content-Type", "")
        assert content_type.startswith("text/plain"), content_type
        return Samples(response.read().decode())
