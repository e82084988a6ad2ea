"""The advertised table and the message definitions agree with each other and with KAFKA-PROTOCOL.md."""

from __future__ import annotations

import pytest

from flowbus.protocol import FIRST_FLEXIBLE_VERSION, SUPPORTED_VERSIONS, ApiKey
from flowbus.protocol.api import is_flexible, is_supported
from flowbus.protocol.messages import REQUESTS, RESPONSES
from flowbus.protocol.schema import compile_plan

# KAFKA-PROTOCOL.md: advertised range, first flexible version. Produce and Fetch start where they
# are implemented (3 and 4: RecordBatch v2), not at 0 as the notes advise (issue 12, item 4).
EXPECTED = {
    0: ((3, 9), 9), 1: ((4, 12), 12), 2: ((0, 7), 6), 3: ((0, 12), 9), 8: ((0, 8), 8), 9: ((0, 7), 6),
    10: ((0, 3), 3), 11: ((0, 7), 6), 12: ((0, 4), 4), 13: ((0, 4), 4), 14: ((0, 5), 4), 15: ((0, 5), 5),
    16: ((0, 4), 3), 17: ((0, 1), None), 18: ((0, 4), 3), 19: ((0, 5), 5), 20: ((0, 5), 4), 22: ((0, 4), 2),
    23: ((0, 3), 4), 24: ((0, 3), 3), 25: ((0, 3), 3), 26: ((0, 3), 3), 28: ((0, 3), 3), 32: ((0, 4), 4),
    36: ((0, 2), 2),
    # Admin APIs checked against apache/kafka's JSON specs (issue 12, item 1): DeleteRecords,
    # AlterConfigs, DescribeLogDirs, CreatePartitions, IncrementalAlterConfigs.
    21: ((0, 2), 2), 33: ((0, 2), 2), 35: ((0, 4), 2), 37: ((0, 3), 2), 44: ((0, 1), 1),
    # DeleteGroups, OffsetDelete, DescribeCluster, DescribeProducers, DescribeTransactions,
    # ListTransactions (v2's regex filter is not spoken).
    42: ((0, 2), 2), 47: ((0, 0), None), 60: ((0, 2), 0), 61: ((0, 0), 0), 65: ((0, 0), 0), 66: ((0, 1), 0),
    # DescribeUserScramCredentials, AlterUserScramCredentials (issue 14, KIP-554).
    50: ((0, 0), 0), 51: ((0, 0), 0),
    # DescribeAcls, CreateAcls, DeleteAcls (issue 14, item 3).
    29: ((0, 3), 2), 30: ((0, 3), 2), 31: ((0, 3), 2),
}


def test_table_matches_the_shared_protocol_notes() -> None:
    assert {int(key): (rng, FIRST_FLEXIBLE_VERSION[key]) for key, rng in SUPPORTED_VERSIONS.items()} == EXPECTED


@pytest.mark.parametrize("key", list(ApiKey))
def test_definitions_cover_exactly_the_advertised_versions(key: ApiKey) -> None:
    low, high = SUPPORTED_VERSIONS[key]
    for spec in (REQUESTS[key], RESPONSES[key]):
        assert (spec.valid.low, spec.valid.high) == (low, high)
        for version in range(low, high + 1):
            assert compile_plan(spec, version).flexible == is_flexible(key, version)
        with pytest.raises(ValueError):
            compile_plan(spec, high + 1)


def test_is_supported() -> None:
    assert is_supported(18, 4) and not is_supported(18, 5) and not is_supported(27, 0) and not is_supported(1, -1)
