"""Kafka's numbered error codes (the ``ErrorCode`` int16 in almost every response).

Numbers and retriability follow Apache Kafka's ``org.apache.kafka.common.protocol.Errors`` enum: a
client retries a *retriable* error (after refreshing metadata or finding the coordinator again) and
surfaces the others. The broker must pick the right code, because clients branch on it: e.g.
librdkafka re-joins on UNKNOWN_MEMBER_ID but only backs off on COORDINATOR_LOAD_IN_PROGRESS.

The descriptions are ours; they say what the broker means by the code.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Every Kafka error code, by its protocol name."""

    UNKNOWN_SERVER_ERROR = -1
    NONE = 0
    OFFSET_OUT_OF_RANGE = 1
    CORRUPT_MESSAGE = 2
    UNKNOWN_TOPIC_OR_PARTITION = 3
    INVALID_FETCH_SIZE = 4
    LEADER_NOT_AVAILABLE = 5
    NOT_LEADER_OR_FOLLOWER = 6
    REQUEST_TIMED_OUT = 7
    BROKER_NOT_AVAILABLE = 8
    REPLICA_NOT_AVAILABLE = 9
    MESSAGE_TOO_LARGE = 10
    STALE_CONTROLLER_EPOCH = 11
    OFFSET_METADATA_TOO_LARGE = 12
    NETWORK_EXCEPTION = 13
    COORDINATOR_LOAD_IN_PROGRESS = 14
    COORDINATOR_NOT_AVAILABLE = 15
    NOT_COORDINATOR = 16
    INVALID_TOPIC_EXCEPTION = 17
    RECORD_LIST_TOO_LARGE = 18
    NOT_ENOUGH_REPLICAS = 19
    NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20
    INVALID_REQUIRED_ACKS = 21
    ILLEGAL_GENERATION = 22
    INCONSISTENT_GROUP_PROTOCOL = 23
    INVALID_GROUP_ID = 24
    UNKNOWN_MEMBER_ID = 25
    INVALID_SESSION_TIMEOUT = 26
    REBALANCE_IN_PROGRESS = 27
    INVALID_COMMIT_OFFSET_SIZE = 28
    TOPIC_AUTHORIZATION_FAILED = 29
    GROUP_AUTHORIZATION_FAILED = 30
    CLUSTER_AUTHORIZATION_FAILED = 31
    INVALID_TIMESTAMP = 32
    UNSUPPORTED_SASL_MECHANISM = 33
    ILLEGAL_SASL_STATE = 34
    UNSUPPORTED_VERSION = 35
    TOPIC_ALREADY_EXISTS = 36
    INVALID_PARTITIONS = 37
    INVALID_REPLICATION_FACTOR = 38
    INVALID_REPLICA_ASSIGNMENT = 39
    INVALID_CONFIG = 40
    NOT_CONTROLLER = 41
    INVALID_REQUEST = 42
    UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
    POLICY_VIOLATION = 44
    OUT_OF_ORDER_SEQUENCE_NUMBER = 45
    DUPLICATE_SEQUENCE_NUMBER = 46
    INVALID_PRODUCER_EPOCH = 47
    INVALID_TXN_STATE = 48
    INVALID_PRODUCER_ID_MAPPING = 49
    INVALID_TRANSACTION_TIMEOUT = 50
    CONCURRENT_TRANSACTIONS = 51
    TRANSACTION_COORDINATOR_FENCED = 52
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53
    SECURITY_DISABLED = 54
    OPERATION_NOT_ATTEMPTED = 55
    KAFKA_STORAGE_ERROR = 56
    LOG_DIR_NOT_FOUND = 57
    SASL_AUTHENTICATION_FAILED = 58
    UNKNOWN_PRODUCER_ID = 59
    REASSIGNMENT_IN_PROGRESS = 60
    DELEGATION_TOKEN_AUTH_DISABLED = 61
    DELEGATION_TOKEN_NOT_FOUND = 62
    DELEGATION_TOKEN_OWNER_MISMATCH = 63
    DELEGATION_TOKEN_REQUEST_NOT_ALLOWED = 64
    DELEGATION_TOKEN_AUTHORIZATION_FAILED = 65
    DELEGATION_TOKEN_EXPIRED = 66
    INVALID_PRINCIPAL_TYPE = 67
    NON_EMPTY_GROUP = 68
    GROUP_ID_NOT_FOUND = 69
    FETCH_SESSION_ID_NOT_FOUND = 70
    INVALID_FETCH_SESSION_EPOCH = 71
    LISTENER_NOT_FOUND = 72
    TOPIC_DELETION_DISABLED = 73
    FENCED_LEADER_EPOCH = 74
    UNKNOWN_LEADER_EPOCH = 75
    UNSUPPORTED_COMPRESSION_TYPE = 76
    STALE_BROKER_EPOCH = 77
    OFFSET_NOT_AVAILABLE = 78
    MEMBER_ID_REQUIRED = 79
    PREFERRED_LEADER_NOT_AVAILABLE = 80
    GROUP_MAX_SIZE_REACHED = 81
    FENCED_INSTANCE_ID = 82
    ELIGIBLE_LEADERS_NOT_AVAILABLE = 83
    ELECTION_NOT_NEEDED = 84
    NO_REASSIGNMENT_IN_PROGRESS = 85
    GROUP_SUBSCRIBED_TO_TOPIC = 86
    INVALID_RECORD = 87
    UNSTABLE_OFFSET_COMMIT = 88
    THROTTLING_QUOTA_EXCEEDED = 89
    PRODUCER_FENCED = 90
    RESOURCE_NOT_FOUND = 91
    DUPLICATE_RESOURCE = 92
    UNACCEPTABLE_CREDENTIAL = 93
    INCONSISTENT_VOTER_SET = 94
    INVALID_UPDATE_VERSION = 95
    FEATURE_UPDATE_FAILED = 96
    PRINCIPAL_DESERIALIZATION_FAILURE = 97
    SNAPSHOT_NOT_FOUND = 98
    POSITION_OUT_OF_RANGE = 99
    UNKNOWN_TOPIC_ID = 100
    DUPLICATE_BROKER_REGISTRATION = 101
    BROKER_ID_NOT_REGISTERED = 102
    INCONSISTENT_TOPIC_ID = 103
    INCONSISTENT_CLUSTER_ID = 104
    TRANSACTIONAL_ID_NOT_FOUND = 105
    FETCH_SESSION_TOPIC_ID_ERROR = 106
    INELIGIBLE_REPLICA = 107
    NEW_LEADER_ELECTED = 108
    OFFSET_MOVED_TO_TIERED_STORAGE = 109
    FENCED_MEMBER_EPOCH = 110
    UNRELEASED_INSTANCE_ID = 111
    UNSUPPORTED_ASSIGNOR = 112
    STALE_MEMBER_EPOCH = 113
    MISMATCHED_ENDPOINT_TYPE = 114
    UNSUPPORTED_ENDPOINT_TYPE = 115
    UNKNOWN_CONTROLLER_ID = 116
    UNKNOWN_SUBSCRIPTION_ID = 117
    TELEMETRY_TOO_LARGE = 118
    INVALID_REGISTRATION = 119
    TRANSACTION_ABORTABLE = 120
    INVALID_RECORD_STATE = 121
    SHARE_SESSION_NOT_FOUND = 122
    INVALID_SHARE_SESSION_EPOCH = 123
    FENCED_STATE_EPOCH = 124
    INVALID_VOTER_KEY = 125
    DUPLICATE_VOTER = 126
    VOTER_NOT_FOUND = 127


_E = ErrorCode

#: Codes a client may retry as-is (after refreshing metadata / the coordinator), per Kafka's
#: ``RetriableException`` hierarchy. Everything else is fatal for that request.
RETRIABLE_CODES: frozenset[ErrorCode] = frozenset({
    _E.CORRUPT_MESSAGE, _E.UNKNOWN_TOPIC_OR_PARTITION, _E.LEADER_NOT_AVAILABLE, _E.NOT_LEADER_OR_FOLLOWER,
    _E.REQUEST_TIMED_OUT, _E.REPLICA_NOT_AVAILABLE, _E.NETWORK_EXCEPTION, _E.COORDINATOR_LOAD_IN_PROGRESS,
    _E.COORDINATOR_NOT_AVAILABLE, _E.NOT_COORDINATOR, _E.NOT_ENOUGH_REPLICAS, _E.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    _E.NOT_CONTROLLER, _E.CONCURRENT_TRANSACTIONS, _E.KAFKA_STORAGE_ERROR, _E.FETCH_SESSION_ID_NOT_FOUND,
    _E.INVALID_FETCH_SESSION_EPOCH, _E.LISTENER_NOT_FOUND, _E.FENCED_LEADER_EPOCH, _E.UNKNOWN_LEADER_EPOCH,
    _E.OFFSET_NOT_AVAILABLE, _E.PREFERRED_LEADER_NOT_AVAILABLE, _E.ELIGIBLE_LEADERS_NOT_AVAILABLE,
    _E.ELECTION_NOT_NEEDED, _E.UNSTABLE_OFFSET_COMMIT, _E.THROTTLING_QUOTA_EXCEEDED, _E.UNKNOWN_TOPIC_ID,
    _E.INCONSISTENT_TOPIC_ID, _E.FETCH_SESSION_TOPIC_ID_ERROR, _E.SHARE_SESSION_NOT_FOUND,
    _E.INVALID_SHARE_SESSION_EPOCH,
})

#: Our own one-line meanings, for log lines and exception messages.
_DESCRIPTIONS: dict[ErrorCode, str] = {
    _E.UNKNOWN_SERVER_ERROR: "the server hit an unexpected error",
    _E.NONE: "no error",
    _E.OFFSET_OUT_OF_RANGE: "the requested offset is outside the partition's log",
    _E.CORRUPT_MESSAGE: "a record batch failed its CRC or is malformed",
    _E.UNKNOWN_TOPIC_OR_PARTITION: "this broker does not host that topic or partition",
    _E.INVALID_FETCH_SIZE: "the requested fetch size is invalid",
    _E.LEADER_NOT_AVAILABLE: "the partition has no leader right now (e.g. just created)",
    _E.NOT_LEADER_OR_FOLLOWER: "this broker is not the leader (or a follower) for the partition",
    _E.REQUEST_TIMED_OUT: "the request timed out on the broker",
    _E.BROKER_NOT_AVAILABLE: "the broker is not available",
    _E.REPLICA_NOT_AVAILABLE: "the replica is not available",
    _E.MESSAGE_TOO_LARGE: "a batch is larger than the broker accepts",
    _E.OFFSET_METADATA_TOO_LARGE: "the committed offset metadata string is too long",
    _E.NETWORK_EXCEPTION: "the server disconnected before the response arrived",
    _E.COORDINATOR_LOAD_IN_PROGRESS: "the coordinator is still loading its state; retry",
    _E.COORDINATOR_NOT_AVAILABLE: "the coordinator is not available",
    _E.NOT_COORDINATOR: "this broker is not the coordinator for that group or transactional id",
    _E.INVALID_TOPIC_EXCEPTION: "the topic name is invalid or the topic is internal",
    _E.RECORD_LIST_TOO_LARGE: "the produce request is larger than the segment size",
    _E.INVALID_REQUIRED_ACKS: "acks must be -1, 0 or 1",
    _E.ILLEGAL_GENERATION: "the group generation given is not the current one",
    _E.INCONSISTENT_GROUP_PROTOCOL: "the member's protocol type or protocols do not match the group",
    _E.INVALID_GROUP_ID: "the group id is empty or invalid",
    _E.UNKNOWN_MEMBER_ID: "the group does not know this member id",
    _E.INVALID_SESSION_TIMEOUT: "the session timeout is outside the broker's allowed range",
    _E.REBALANCE_IN_PROGRESS: "the group is rebalancing; rejoin",
    _E.INVALID_COMMIT_OFFSET_SIZE: "the committed offset metadata size is invalid",
    _E.TOPIC_AUTHORIZATION_FAILED: "not authorized for the topic",
    _E.GROUP_AUTHORIZATION_FAILED: "not authorized for the group",
    _E.CLUSTER_AUTHORIZATION_FAILED: "not authorized for the cluster",
    _E.INVALID_TIMESTAMP: "a record timestamp is outside the accepted range",
    _E.UNSUPPORTED_SASL_MECHANISM: "the broker does not support that SASL mechanism",
    _E.ILLEGAL_SASL_STATE: "the request is not valid in the current SASL state",
    _E.UNSUPPORTED_VERSION: "the broker does not support this API version",
    _E.TOPIC_ALREADY_EXISTS: "the topic already exists",
    _E.INVALID_PARTITIONS: "the number of partitions is invalid",
    _E.INVALID_REPLICATION_FACTOR: "the replication factor is invalid",
    _E.INVALID_REPLICA_ASSIGNMENT: "the replica assignment is invalid",
    _E.INVALID_CONFIG: "a topic config is invalid",
    _E.NOT_CONTROLLER: "this broker is not the controller",
    _E.INVALID_REQUEST: "the request is malformed or not valid in this context",
    _E.UNSUPPORTED_FOR_MESSAGE_FORMAT: "the message format version does not support this request",
    _E.POLICY_VIOLATION: "the request violates a broker policy",
    _E.OUT_OF_ORDER_SEQUENCE_NUMBER: "the producer's sequence number is not the next expected one",
    _E.DUPLICATE_SEQUENCE_NUMBER: "the producer sent a duplicate sequence number",
    _E.INVALID_PRODUCER_EPOCH: "the producer epoch is older than the current one (fenced)",
    _E.INVALID_TXN_STATE: "the operation is not valid in the transaction's current state",
    _E.INVALID_PRODUCER_ID_MAPPING: "the producer id does not match the transactional id",
    _E.INVALID_TRANSACTION_TIMEOUT: "the transaction timeout is larger than the broker allows",
    _E.CONCURRENT_TRANSACTIONS: "a previous transaction of this producer is still completing; retry",
    _E.TRANSACTION_COORDINATOR_FENCED: "a newer transaction coordinator has fenced this one",
    _E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "not authorized for the transactional id",
    _E.SECURITY_DISABLED: "security features are disabled",
    _E.OPERATION_NOT_ATTEMPTED: "the operation was not attempted because of another error",
    _E.KAFKA_STORAGE_ERROR: "the broker hit a disk error for the partition",
    _E.SASL_AUTHENTICATION_FAILED: "SASL authentication failed",
    _E.UNKNOWN_PRODUCER_ID: "the broker has no state for this producer id",
    _E.NON_EMPTY_GROUP: "the group still has members",
    _E.GROUP_ID_NOT_FOUND: "the group does not exist",
    _E.FETCH_SESSION_ID_NOT_FOUND: "the fetch session id is unknown",
    _E.INVALID_FETCH_SESSION_EPOCH: "the fetch session epoch is wrong",
    _E.TOPIC_DELETION_DISABLED: "topic deletion is disabled",
    _E.FENCED_LEADER_EPOCH: "the leader epoch in the request is older than the broker's",
    _E.UNKNOWN_LEADER_EPOCH: "the leader epoch in the request is newer than the broker's",
    _E.UNSUPPORTED_COMPRESSION_TYPE: "the consumer cannot read the compression type of the data",
    _E.OFFSET_NOT_AVAILABLE: "no offset is available for that timestamp yet",
    _E.MEMBER_ID_REQUIRED: "the group assigned a member id; rejoin with it",
    _E.GROUP_MAX_SIZE_REACHED: "the group is full",
    _E.FENCED_INSTANCE_ID: "another member with this group instance id has joined",
    _E.INVALID_RECORD: "a record failed broker-side validation",
    _E.UNSTABLE_OFFSET_COMMIT: "a transactional offset commit for the partition is pending",
    _E.THROTTLING_QUOTA_EXCEEDED: "a throttling quota was exceeded",
    _E.PRODUCER_FENCED: "a newer producer with the same transactional id has fenced this one",
    _E.TRANSACTION_ABORTABLE: "the transaction must be aborted",
}


def _fallback_description(code: ErrorCode) -> str:
    """A readable description derived from the code's name, for codes the broker never sends."""
    return code.name.lower().replace("_", " ")


#: code -> (retriable, description); read by :mod:`flowbus.protocol.errors`.
ERROR_INFO: dict[ErrorCode, tuple[bool, str]] = {
    code: (code in RETRIABLE_CODES, _DESCRIPTIONS.get(code) or _fallback_description(code)) for code in ErrorCode
}


def is_retriable(code: int) -> bool:
    """Whether a client may retry after this error code (unknown codes are not retriable)."""
    return code in RETRIABLE_CODES
