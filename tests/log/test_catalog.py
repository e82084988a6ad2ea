from __future__ import annotations

from pathlib import Path

import pytest

from flowbus.log.catalog import Catalog, TopicEntry, validate_topic_name
from flowbus.log.errors import InvalidTopicError, LogError


@pytest.mark.parametrize("name", ["orders", "a.b_c-D9", "x" * 249, "__consumer_offsets", "..."])
def test_legal_names(name: str) -> None:
    validate_topic_name(name)


@pytest.mark.parametrize("name", ["", ".", "..", "x" * 250, "a b", "a/b", "é", "a:b"])
def test_illegal_names(name: str) -> None:
    with pytest.raises(InvalidTopicError):
        validate_topic_name(name)


def test_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    catalog.topics["a"] = TopicEntry("a", 3, {"retention.ms": "10"})
    catalog.save()
    again = Catalog(tmp_path)
    assert again.topics["a"].partitions == 3 and again.topics["a"].overrides == {"retention.ms": "10"}
    assert again.topics["a"].topic_id == catalog.topics["a"].topic_id
    assert not (tmp_path / "catalog.json.tmp").exists()


def test_damaged_catalog_refuses_to_open(tmp_path: Path) -> None:
    (tmp_path / "catalog.json").write_text("{not json")
    with pytest.raises(LogError):
        Catalog(tmp_path)
