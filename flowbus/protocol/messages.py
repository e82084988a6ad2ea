"""Our definitions of every Kafka message flowbus speaks, at the versions it supports.

Each definition records facts from Apache Kafka's JSON message specs
(``clients/src/main/resources/common/message/<Name>.json`` in ``apache/kafka``): field names in
snake_case, types, the versions each field exists in, nullable versions, tags of tagged fields and
non-zero defaults. The valid range of each message is ours (``flowbus.protocol.api``); a field range
that reaches past it (``"0-12"`` on a message we stop at 12) is harmless.

Field names follow the current upstream specs. Where upstream renamed a field when it added versions
we do not speak, we still use the upstream name, e.g. OffsetCommit's ``generation_id_or_member_epoch``
(KIP-848) and AddPartitionsToTxn's ``v3_and_below_*`` fields (KIP-890), so the names match the
authority and kafka-python.

Adding a message or version: see ``docs/protocol.md``.
"""

from __future__ import annotations

from flowbus.protocol.api import ApiKey
from flowbus.protocol.schema import MessageSpec, arr, f, message, struct

# Produce (0), from v3: transactional_id and RecordBatch v2 only (older versions carry MessageSet
# v0/v1, which flowbus does not speak, so they are not advertised). v5 log_start_offset,
# v8 per-batch record errors, v9 flexible. acks=0 gets no response at all (the broker's job).
PRODUCE_REQUEST = message("ProduceRequest", "3-9", "9+", [
    f("transactional_id", "string", "3+", nullable="3+", default=None),
    f("acks", "int16"),
    f("timeout_ms", "int32"),
    arr("topic_data", [
        f("name", "string", "0-12"),
        arr("partition_data", [
            f("index", "int32"),
            f("records", "records", nullable="0+"),
        ]),
    ]),
])

PRODUCE_RESPONSE = message("ProduceResponse", "3-9", "9+", [
    arr("responses", [
        f("name", "string", "0-12"),
        arr("partition_responses", [
            f("index", "int32"),
            f("error_code", "int16"),
            f("base_offset", "int64"),
            f("log_append_time_ms", "int64", "2+", default=-1),
            f("log_start_offset", "int64", "5+", default=-1),
            arr("record_errors", [
                f("batch_index", "int32", "8+"),
                f("batch_index_error_message", "string", "8+", nullable="8+", default=None),
            ], "8+"),
            f("error_message", "string", "8+", nullable="8+", default=None),
        ]),
    ]),
    f("throttle_time_ms", "int32", "1+", default=0),
])

# Fetch (1). v4 adds isolation level, LSO and aborted transactions, v7 fetch sessions, v11 rack
# and preferred read replica, v12 flexible with tagged diverging epoch / current leader. v13+
# (topic ids) is not spoken.
FETCH_REQUEST = message("FetchRequest", "4-12", "12+", [
    f("cluster_id", "string", "12+", nullable="12+", tag=0, tagged="12+", default=None),
    f("replica_id", "int32", "0-14", default=-1),
    f("max_wait_ms", "int32"),
    f("min_bytes", "int32"),
    f("max_bytes", "int32", "3+", default=2147483647),
    f("isolation_level", "int8", "4+", default=0),
    f("session_id", "int32", "7+", default=0),
    f("session_epoch", "int32", "7+", default=-1),
    arr("topics", [
        f("topic", "string", "0-12"),
        arr("partitions", [
            f("partition", "int32"),
            f("current_leader_epoch", "int32", "9+", default=-1),
            f("fetch_offset", "int64"),
            f("last_fetched_epoch", "int32", "12+", default=-1),
            f("log_start_offset", "int64", "5+", default=-1),
            f("partition_max_bytes", "int32"),
        ]),
    ]),
    arr("forgotten_topics_data", [
        f("topic", "string", "7-12"),
        f("partitions", "[]int32", "7+"),
    ], "7+"),
    f("rack_id", "string", "11+", default=""),
])

FETCH_RESPONSE = message("FetchResponse", "4-12", "12+", [
    f("throttle_time_ms", "int32", "1+"),
    f("error_code", "int16", "7+"),
    f("session_id", "int32", "7+", default=0),
    arr("responses", [
        f("topic", "string", "0-12"),
        arr("partitions", [
            f("partition_index", "int32"),
            f("error_code", "int16"),
            f("high_watermark", "int64"),
            f("last_stable_offset", "int64", "4+", default=-1),
            f("log_start_offset", "int64", "5+", default=-1),
            struct("diverging_epoch", [
                f("epoch", "int32", "12+", default=-1),
                f("end_offset", "int64", "12+", default=-1),
            ], "12+", tag=0, tagged="12+"),
            struct("current_leader", [
                f("leader_id", "int32", "12+", default=-1),
                f("leader_epoch", "int32", "12+", default=-1),
            ], "12+", tag=1, tagged="12+"),
            struct("snapshot_id", [
                f("end_offset", "int64", default=-1),
                f("epoch", "int32", default=-1),
            ], "12+", tag=2, tagged="12+"),
            arr("aborted_transactions", [
                f("producer_id", "int64", "4+"),
                f("first_offset", "int64", "4+"),
            ], "4+", nullable="4+"),
            f("preferred_read_replica", "int32", "11+", default=-1),
            f("records", "records", nullable="0+"),
        ]),
    ]),
])

# ListOffsets (2). v0 returns an array of old-style offsets (max_num_offsets); v1+ one offset
# per partition and timestamp; v2 isolation level; v4 leader epochs; v6 flexible.
LIST_OFFSETS_REQUEST = message("ListOffsetsRequest", "0-7", "6+", [
    f("replica_id", "int32"),
    f("isolation_level", "int8", "2+"),
    arr("topics", [
        f("name", "string"),
        arr("partitions", [
            f("partition_index", "int32"),
            f("current_leader_epoch", "int32", "4+", default=-1),
            f("timestamp", "int64"),
            f("max_num_offsets", "int32", "0", default=1),
        ]),
    ]),
])

LIST_OFFSETS_RESPONSE = message("ListOffsetsResponse", "0-7", "6+", [
    f("throttle_time_ms", "int32", "2+"),
    arr("topics", [
        f("name", "string"),
        arr("partitions", [
            f("partition_index", "int32"),
            f("error_code", "int16"),
            f("old_style_offsets", "[]int64", "0"),
            f("timestamp", "int64", "1+", default=-1),
            f("offset", "int64", "1+", default=-1),
            f("leader_epoch", "int32", "4+", default=-1),
        ]),
    ]),
])

# Metadata (3). topics null = all topics from v1; v4 allow_auto_topic_creation; v9 flexible;
# v10 topic ids (the zero UUID is fine for clients).
METADATA_REQUEST = message("MetadataRequest", "0-12", "9+", [
    arr("topics", [
        f("topic_id", "uuid", "10+"),
        f("name", "string", nullable="10+"),
    ], nullable="1+"),
    f("allow_auto_topic_creation", "bool", "4+", default=True),
    f("include_cluster_authorized_operations", "bool", "8-10"),
    f("include_topic_authorized_operations", "bool", "8+"),
])

METADATA_RESPONSE = message("MetadataResponse", "0-12", "9+", [
    f("throttle_time_ms", "int32", "3+"),
    arr("brokers", [
        f("node_id", "int32"),
        f("host", "string"),
        f("port", "int32"),
        f("rack", "string", "1+", nullable="1+", default=None),
    ]),
    f("cluster_id", "string", "2+", nullable="2+", default=None),
    f("controller_id", "int32", "1+", default=-1),
    arr("topics", [
        f("error_code", "int16"),
        f("name", "string", nullable="12+"),
        f("topic_id", "uuid", "10+"),
        f("is_internal", "bool", "1+", default=False),
        arr("partitions", [
            f("error_code", "int16"),
            f("partition_index", "int32"),
            f("leader_id", "int32"),
            f("leader_epoch", "int32", "7+", default=-1),
            f("replica_nodes", "[]int32"),
            f("isr_nodes", "[]int32"),
            f("offline_replicas", "[]int32", "5+"),
        ]),
        f("topic_authorized_operations", "int32", "8+", default=-2147483648),
    ]),
    f("cluster_authorized_operations", "int32", "8-10", default=-2147483648),
])

# OffsetCommit (8). v1 adds generation/member and a per-partition commit timestamp (v1 only),
# v2-4 a retention time, v7 group instance id, v8 flexible.
OFFSET_COMMIT_REQUEST = message("OffsetCommitRequest", "0-8", "8+", [
    f("group_id", "string"),
    f("generation_id_or_member_epoch", "int32", "1+", default=-1),
    f("member_id", "string", "1+"),
    f("group_instance_id", "string", "7+", nullable="7+", default=None),
    f("retention_time_ms", "int64", "2-4", default=-1),
    arr("topics", [
        f("name", "string", "0-9"),
        arr("partitions", [
            f("partition_index", "int32"),
            f("committed_offset", "int64"),
            f("committed_leader_epoch", "int32", "6+", default=-1),
            f("commit_timestamp", "int64", "1", default=-1),
            f("committed_metadata", "string", nullable="0+"),
        ]),
    ]),
])

OFFSET_COMMIT_RESPONSE = message("OffsetCommitResponse", "0-8", "8+", [
    f("throttle_time_ms", "int32", "3+"),
    arr("topics", [
        f("name", "string", "0-9"),
        arr("partitions", [
            f("partition_index", "int32"),
            f("error_code", "int16"),
        ]),
    ]),
])

# OffsetFetch (9). topics null = all partitions from v2, plus a top-level error; v7 require_stable;
# v6 flexible. v8+ (batched groups) is not spoken.
OFFSET_FETCH_REQUEST = message("OffsetFetchRequest", "0-7", "6+", [
    f("group_id", "string", "0-7"),
    arr("topics", [
        f("name", "string", "0-7"),
        f("partition_indexes", "[]int32", "0-7"),
    ], "0-7", nullable="2-7"),
    f("require_stable", "bool", "7+", default=False),
])

OFFSET_FETCH_RESPONSE = message("OffsetFetchResponse", "0-7", "6+", [
    f("throttle_time_ms", "int32", "3+"),
    arr("topics", [
        f("name", "string", "0-7"),
        arr("partitions", [
            f("partition_index", "int32", "0-7"),
            f("committed_offset", "int64", "0-7"),
            f("committed_leader_epoch", "int32", "5-7", default=-1),
            f("metadata", "string", "0-7", nullable="0-7"),
            f("error_code", "int16", "0-7"),
        ], "0-7"),
    ], "0-7"),
    f("error_code", "int16", "2-7", default=0),
])

# FindCoordinator (10). v1 adds key_type (0 group, 1 transaction); v3 flexible. v4+ is batched.
FIND_COORDINATOR_REQUEST = message("FindCoordinatorRequest", "0-3", "3+", [
    f("key", "string", "0-3"),
    f("key_type", "int8", "1+", default=0),
])

FIND_COORDINATOR_RESPONSE = message("FindCoordinatorResponse", "0-3", "3+", [
    f("throttle_time_ms", "int32", "1+"),
    f("error_code", "int16", "0-3"),
    f("error_message", "string", "1-3", nullable="1-3"),
    f("node_id", "int32", "0-3"),
    f("host", "string", "0-3"),
    f("port", "int32", "0-3"),
])

# JoinGroup (11). v1 rebalance timeout, v4 MEMBER_ID_REQUIRED flow, v5 static membership,
# v6 flexible, v7 protocol type/name in the response.
JOIN_GROUP_REQUEST = message("JoinGroupRequest", "0-7", "6+", [
    f("group_id", "string"),
    f("session_timeout_ms", "int32"),
    f("rebalance_timeout_ms", "int32", "1+", default=-1),
    f("member_id", "string"),
    f("group_instance_id", "string", "5+", nullable="5+", default=None),
    f("protocol_type", "string"),
    arr("protocols", [
        f("name", "string"),
        f("metadata", "bytes"),
    ]),
])

JOIN_GROUP_RESPONSE = message("JoinGroupResponse", "0-7", "6+", [
    f("throttle_time_ms", "int32", "2+"),
    f("error_code", "int16"),
    f("generation_id", "int32", default=-1),
    f("protocol_type", "string", "7+", nullable="7+", default=None),
    f("protocol_name", "string", nullable="7+"),
    f("leader", "string"),
    f("member_id", "string"),
    arr("members", [
        f("member_id", "string"),
        f("group_instance_id", "string", "5+", nullable="5+", default=None),
        f("metadata", "bytes"),
    ]),
])

# Heartbeat (12). v3 group instance id, v4 flexible.
HEARTBEAT_REQUEST = message("HeartbeatRequest", "0-4", "4+", [
    f("group_id", "string"),
    f("generation_id", "int32"),
    f("member_id", "string"),
    f("group_instance_id", "string", "3+", nullable="3+", default=None),
])

HEARTBEAT_RESPONSE = message("HeartbeatResponse", "0-4", "4+", [
    f("throttle_time_ms", "int32", "1+"),
    f("error_code", "int16"),
])

# LeaveGroup (13). v3 replaces member_id with a batch of members; v4 flexible.
LEAVE_GROUP_REQUEST = message("LeaveGroupRequest", "0-4", "4+", [
    f("group_id", "string"),
    f("member_id", "string", "0-2"),
    arr("members", [
        f("member_id", "string", "3+"),
        f("group_instance_id", "string", "3+", nullable="3+", default=None),
    ], "3+"),
])

LEAVE_GROUP_RESPONSE = message("LeaveGroupResponse", "0-4", "4+", [
    f("throttle_time_ms", "int32", "1+"),
    f("error_code", "int16"),
    arr("members", [
        f("member_id", "string", "3+"),
        f("group_instance_id", "string", "3+", nullable="3+"),
        f("error_code", "int16", "3+"),
    ], "3+"),
])

# SyncGroup (14). v3 group instance id, v4 flexible, v5 protocol type/name.
SYNC_GROUP_REQUEST = message("SyncGroupRequest", "0-5", "4+", [
    f("group_id", "string"),
    f("generation_id", "int32"),
    f("member_id", "string"),
    f("group_instance_id", "string", "3+", nullable="3+", default=None),
    f("protocol_type", "string", "5+", nullable="5+", default=None),
    f("protocol_name", "string", "5+", nullable="5+", default=None),
    arr("assignments", [
        f("member_id", "string"),
        f("assignment", "bytes"),
    ]),
])

SYNC_GROUP_RESPONSE = message("SyncGroupResponse", "0-5", "4+", [
    f("throttle_time_ms", "int32", "1+"),
    f("error_code", "int16"),
    f("protocol_type", "string", "5+", nullable="5+", default=None),
    f("protocol_name", "string", "5+", nullable="5+", default=None),
    f("assignment", "bytes"),
])

# DescribeGroups (15). v3 authorized operations, v4 group instance id, v5 flexible.
DESCRIBE_GROUPS_REQUEST = message("DescribeGroupsRequest", "0-5", "5+", [
    f("groups", "[]string"),
    f("include_authorized_operations", "bool", "3+"),
])

DESCRIBE_GROUPS_RESPONSE = message("DescribeGroupsResponse", "0-5", "5+", [
    f("throttle_time_ms", "int32", "1+"),
    arr("groups", [
        f("error_code", "int16"),
        f("group_id", "string"),
        f("group_state", "string"),
        f("protocol_type", "string"),
        f("protocol_data", "string"),
        arr("members", [
            f("member_id", "string"),
            f("group_instance_id", "string", "4+", nullable="4+", default=None),
            f("client_id", "string"),
            f("client_host", "string"),
            f("member_metadata", "bytes"),
            f("member_assignment", "bytes"),
        ]),
        f("authorized_operations", "int32", "3+", default=-2147483648),
    ]),
])

# ListGroups (16). v3 flexible, v4 state filter.
LIST_GROUPS_REQUEST = message("ListGroupsRequest", "0-4", "3+", [
    f("states_filter", "[]string", "4+"),
])

LIST_GROUPS_RESPONSE = message("ListGroupsResponse", "0-4", "3+", [
    f("throttle_time_ms", "int32", "1+"),
    f("error_code", "int16"),
    arr("groups", [
        f("group_id", "string"),
        f("protocol_type", "string"),
        f("group_state", "string", "4+"),
    ]),
])

# SaslHandshake (17). Never flexible.
SASL_HANDSHAKE_REQUEST = message("SaslHandshakeRequest", "0-1", "none", [
    f("mechanism", "string"),
])

SASL_HANDSHAKE_RESPONSE = message("SaslHandshakeResponse", "0-1", "none", [
    f("error_code", "int16"),
    f("mechanisms", "[]string"),
])

# ApiVersions (18). v3 flexible body with client software name/version and tagged feature
# fields; its response header stays v0 (see codec).
API_VERSIONS_REQUEST = message("ApiVersionsRequest", "0-4", "3+", [
    f("client_software_name", "string", "3+"),
    f("client_software_version", "string", "3+"),
])

API_VERSIONS_RESPONSE = message("ApiVersionsResponse", "0-4", "3+", [
    f("error_code", "int16"),
    arr("api_keys", [
        f("api_key", "int16"),
        f("min_version", "int16"),
        f("max_version", "int16"),
    ]),
    f("throttle_time_ms", "int32", "1+"),
    arr("supported_features", [
        f("name", "string", "3+"),
        f("min_version", "int16", "3+"),
        f("max_version", "int16", "3+"),
    ], "3+", tag=0, tagged="3+"),
    f("finalized_features_epoch", "int64", "3+", tag=1, tagged="3+", default=-1),
    arr("finalized_features", [
        f("name", "string", "3+"),
        f("max_version_level", "int16", "3+"),
        f("min_version_level", "int16", "3+"),
    ], "3+", tag=2, tagged="3+"),
    f("zk_migration_ready", "bool", "3+", tag=3, tagged="3+", default=False),
])

# CreateTopics (19). v1 validate_only and error messages, v5 flexible with configs echoed back.
CREATE_TOPICS_REQUEST = message("CreateTopicsRequest", "0-5", "5+", [
    arr("topics", [
        f("name", "string"),
        f("num_partitions", "int32"),
        f("replication_factor", "int16"),
        arr("assignments", [
            f("partition_index", "int32"),
            f("broker_ids", "[]int32"),
        ]),
        arr("configs", [
            f("name", "string"),
            f("value", "string", nullable="0+"),
        ]),
    ]),
    f("timeout_ms", "int32", default=60000),
    f("validate_only", "bool", "1+", default=False),
])

CREATE_TOPICS_RESPONSE = message("CreateTopicsResponse", "0-5", "5+", [
    f("throttle_time_ms", "int32", "2+"),
    arr("topics", [
        f("name", "string"),
        f("error_code", "int16"),
        f("error_message", "string", "1+", nullable="0+"),
        f("topic_config_error_code", "int16", "5+", tag=0, tagged="5+"),
        f("num_partitions", "int32", "5+", default=-1),
        f("replication_factor", "int16", "5+", default=-1),
        arr("configs", [
            f("name", "string", "5+"),
            f("value", "string", "5+", nullable="5+"),
            f("read_only", "bool", "5+"),
            f("config_source", "int8", "5+", default=-1),
            f("is_sensitive", "bool", "5+"),
        ], "5+", nullable="5+"),
    ]),
])

# DeleteTopics (20). v4 flexible, v5 per-topic error messages.
DELETE_TOPICS_REQUEST = message("DeleteTopicsRequest", "0-5", "4+", [
    f("topic_names", "[]string", "0-5"),
    f("timeout_ms", "int32"),
])

DELETE_TOPICS_RESPONSE = message("DeleteTopicsResponse", "0-5", "4+", [
    f("throttle_time_ms", "int32", "1+"),
    arr("responses", [
        f("name", "string", nullable="6+"),
        f("error_code", "int16"),
        f("error_message", "string", "5+", nullable="5+", default=None),
    ]),
])

# DeleteRecords (21). v1 same as v0, v2 flexible. offset -1 means the high watermark.
DELETE_RECORDS_REQUEST = message("DeleteRecordsRequest", "0-2", "2+", [
    arr("topics", [
        f("name", "string"),
        arr("partitions", [
            f("partition_index", "int32"),
            f("offset", "int64"),
        ]),
    ]),
    f("timeout_ms", "int32"),
])

DELETE_RECORDS_RESPONSE = message("DeleteRecordsResponse", "0-2", "2+", [
    f("throttle_time_ms", "int32"),
    arr("topics", [
        f("name", "string"),
        arr("partitions", [
            f("partition_index", "int32"),
            f("low_watermark", "int64"),
            f("error_code", "int16"),
        ]),
    ]),
])

# InitProducerId (22). v2 flexible, v3 producer id/epoch for epoch bumps.
INIT_PRODUCER_ID_REQUEST = message("InitProducerIdRequest", "0-4", "2+", [
    f("transactional_id", "string", nullable="0+"),
    f("transaction_timeout_ms", "int32"),
    f("producer_id", "int64", "3+", default=-1),
    f("producer_epoch", "int16", "3+", default=-1),
])

INIT_PRODUCER_ID_RESPONSE = message("InitProducerIdResponse", "0-4", "2+", [
    f("throttle_time_ms", "int32"),
    f("error_code", "int16"),
    f("producer_id", "int64", default=-1),
    f("producer_epoch", "int16"),
])

# OffsetForLeaderEpoch (23). v1 leader epoch in the response, v2 current leader epoch, v3
# replica id. First flexible version is 4, so every version we speak is classic.
OFFSET_FOR_LEADER_EPOCH_REQUEST = message("OffsetForLeaderEpochRequest", "0-3", "4+", [
    f("replica_id", "int32", "3+", default=-2),
    arr("topics", [
        f("topic", "string"),
        arr("partitions", [
            f("partition", "int32"),
            f("current_leader_epoch", "int32", "2+", default=-1),
            f("leader_epoch", "int32"),
        ]),
    ]),
])

OFFSET_FOR_LEADER_EPOCH_RESPONSE = message("OffsetForLeaderEpochResponse", "0-3", "4+", [
    f("throttle_time_ms", "int32", "2+"),
    arr("topics", [
        f("topic", "string"),
        arr("partitions", [
            f("error_code", "int16"),
            f("partition", "int32"),
            f("leader_epoch", "int32", "1+", default=-1),
            f("end_offset", "int64", default=-1),
        ]),
    ]),
])

# AddPartitionsToTxn (24). v3 flexible. v4+ batches transactions (broker to broker) and
# is not spoken; upstream names the client fields v3_and_below_*.
ADD_PARTITIONS_TO_TXN_REQUEST = message("AddPartitionsToTxnRequest", "0-3", "3+", [
    f("v3_and_below_transactional_id", "string", "0-3"),
    f("v3_and_below_producer_id", "int64", "0-3"),
    f("v3_and_below_producer_epoch", "int16", "0-3"),
    arr("v3_and_below_topics", [
        f("name", "string"),
        f("partitions", "[]int32"),
    ], "0-3"),
])

ADD_PARTITIONS_TO_TXN_RESPONSE = message("AddPartitionsToTxnResponse", "0-3", "3+", [
    f("throttle_time_ms", "int32"),
    arr("results_by_topic_v3_and_below", [
        f("name", "string"),
        arr("results_by_partition", [
            f("partition_index", "int32"),
            f("partition_error_code", "int16"),
        ]),
    ], "0-3"),
])

# AddOffsetsToTxn (25). v3 flexible.
ADD_OFFSETS_TO_TXN_REQUEST = message("AddOffsetsToTxnRequest", "0-3", "3+", [
    f("transactional_id", "string"),
    f("producer_id", "int64"),
    f("producer_epoch", "int16"),
    f("group_id", "string"),
])

ADD_OFFSETS_TO_TXN_RESPONSE = message("AddOffsetsToTxnResponse", "0-3", "3+", [
    f("throttle_time_ms", "int32"),
    f("error_code", "int16"),
])

# EndTxn (26). v3 flexible.
END_TXN_REQUEST = message("EndTxnRequest", "0-3", "3+", [
    f("transactional_id", "string"),
    f("producer_id", "int64"),
    f("producer_epoch", "int16"),
    f("committed", "bool"),
])

END_TXN_RESPONSE = message("EndTxnResponse", "0-3", "3+", [
    f("throttle_time_ms", "int32"),
    f("error_code", "int16"),
])

# TxnOffsetCommit (28). v2 committed leader epoch, v3 flexible with generation/member.
TXN_OFFSET_COMMIT_REQUEST = message("TxnOffsetCommitRequest", "0-3", "3+", [
    f("transactional_id", "string"),
    f("group_id", "string"),
    f("producer_id", "int64"),
    f("producer_epoch", "int16"),
    f("generation_id", "int32", "3+", default=-1),
    f("member_id", "string", "3+", default=""),
    f("group_instance_id", "string", "3+", nullable="3+", default=None),
    arr("topics", [
        f("name", "string"),
        arr("partitions", [
            f("partition_index", "int32"),
            f("committed_offset", "int64"),
            f("committed_leader_epoch", "int32", "2+", default=-1),
            f("committed_metadata", "string", nullable="0+"),
        ]),
    ]),
])

TXN_OFFSET_COMMIT_RESPONSE = message("TxnOffsetCommitResponse", "0-3", "3+", [
    f("throttle_time_ms", "int32"),
    arr("topics", [
        f("name", "string"),
        arr("partitions", [
            f("partition_index", "int32"),
            f("error_code", "int16"),
        ]),
    ]),
])

# DescribeAcls (29), CreateAcls (30), DeleteAcls (31). v1 adds the pattern type (KIP-290),
# v2 flexible, v3 the USER resource type (which flowbus does not authorize).
DESCRIBE_ACLS_REQUEST = message("DescribeAclsRequest", "0-3", "2+", [
    f("resource_type_filter", "int8"),
    f("resource_name_filter", "string", nullable="0+"),
    f("pattern_type_filter", "int8", "1+", default=3),
    f("principal_filter", "string", nullable="0+"),
    f("host_filter", "string", nullable="0+"),
    f("operation", "int8"),
    f("permission_type", "int8"),
])

DESCRIBE_ACLS_RESPONSE = message("DescribeAclsResponse", "0-3", "2+", [
    f("throttle_time_ms", "int32"),
    f("error_code", "int16"),
    f("error_message", "string", nullable="0+"),
    arr("resources", [
        f("resource_type", "int8"),
        f("resource_name", "string"),
        f("pattern_type", "int8", "1+", default=3),
        arr("acls", [
            f("principal", "string"),
            f("host", "string"),
            f("operation", "int8"),
            f("permission_type", "int8"),
        ]),
    ]),
])

CREATE_ACLS_REQUEST = message("CreateAclsRequest", "0-3", "2+", [
    arr("creations", [
        f("resource_type", "int8"),
        f("resource_name", "string"),
        f("resource_pattern_type", "int8", "1+", default=3),
        f("principal", "string"),
        f("host", "string"),
        f("operation", "int8"),
        f("permission_type", "int8"),
    ]),
])

CREATE_ACLS_RESPONSE = message("CreateAclsResponse", "0-3", "2+", [
    f("throttle_time_ms", "int32"),
    arr("results", [
        f("error_code", "int16"),
        f("error_message", "string", nullable="0+"),
    ]),
])

DELETE_ACLS_REQUEST = message("DeleteAclsRequest", "0-3", "2+", [
    arr("filters", [
        f("resource_type_filter", "int8"),
        f("resource_name_filter", "string", nullable="0+"),
        f("pattern_type_filter", "int8", "1+", default=3),
        f("principal_filter", "string", nullable="0+"),
        f("host_filter", "string", nullable="0+"),
        f("operation", "int8"),
        f("permission_type", "int8"),
    ]),
])

DELETE_ACLS_RESPONSE = message("DeleteAclsResponse", "0-3", "2+", [
    f("throttle_time_ms", "int32"),
    arr("filter_results", [
        f("error_code", "int16"),
        f("error_message", "string", nullable="0+"),
        arr("matching_acls", [
            f("error_code", "int16"),
            f("error_message", "string", nullable="0+"),
            f("resource_type", "int8"),
            f("resource_name", "string"),
            f("pattern_type", "int8", "1+", default=3),
            f("principal", "string"),
            f("host", "string"),
            f("operation", "int8"),
            f("permission_type", "int8"),
        ]),
    ]),
])

# DescribeConfigs (32). v0 has is_default; v1 synonyms and config source; v3 documentation
# and type; v4 flexible.
DESCRIBE_CONFIGS_REQUEST = message("DescribeConfigsRequest", "0-4", "4+", [
    arr("resources", [
        f("resource_type", "int8"),
        f("resource_name", "string"),
        f("configuration_keys", "[]string", nullable="0+"),
    ]),
    f("include_synonyms", "bool", "1+", default=False),
    f("include_documentation", "bool", "3+", default=False),
])

DESCRIBE_CONFIGS_RESPONSE = message("DescribeConfigsResponse", "0-4", "4+", [
    f("throttle_time_ms", "int32"),
    arr("results", [
        f("error_code", "int16"),
        f("error_message", "string", nullable="0+"),
        f("resource_type", "int8"),
        f("resource_name", "string"),
        arr("configs", [
            f("name", "string"),
            f("value", "string", nullable="0+"),
            f("read_only", "bool"),
            f("config_source", "int8", "1+", default=-1),
            f("is_default", "bool", "0"),
            f("is_sensitive", "bool"),
            arr("synonyms", [
                f("name", "string", "1+"),
                f("value", "string", "1+", nullable="0+"),
                f("source", "int8", "1+"),
            ], "1+"),
            f("config_type", "int8", "3+", default=0),
            f("documentation", "string", "3+", nullable="0+"),
        ]),
    ]),
])

# AlterConfigs (33). v1 same as v0, v2 flexible. Replaces every override of a resource.
ALTER_CONFIGS_REQUEST = message("AlterConfigsRequest", "0-2", "2+", [
    arr("resources", [
        f("resource_type", "int8"),
        f("resource_name", "string"),
        arr("configs", [
            f("name", "string"),
            f("value", "string", nullable="0+"),
        ]),
    ]),
    f("validate_only", "bool"),
])

ALTER_CONFIGS_RESPONSE = message("AlterConfigsResponse", "0-2", "2+", [
    f("throttle_time_ms", "int32"),
    arr("responses", [
        f("error_code", "int16"),
        f("error_message", "string", nullable="0+"),
        f("resource_type", "int8"),
        f("resource_name", "string"),
    ]),
])

# DescribeLogDirs (35). v1 same as v0, v2 flexible, v3 top-level error code, v4 volume sizes.
# topics null = every partition.
DESCRIBE_LOG_DIRS_REQUEST = message("DescribeLogDirsRequest", "0-4", "2+", [
    arr("topics", [
        f("topic", "string"),
        f("partitions", "[]int32"),
    ], nullable="0+"),
])

DESCRIBE_LOG_DIRS_RESPONSE = message("DescribeLogDirsResponse", "0-4", "2+", [
    f("throttle_time_ms", "int32"),
    f("error_code", "int16", "3+"),
    arr("results", [
        f("error_code", "int16"),
        f("log_dir", "string"),
        arr("topics", [
            f("name", "string"),
            arr("partitions", [
                f("partition_index", "int32"),
                f("partition_size", "int64"),
                f("offset_lag", "int64"),
                f("is_future_key", "bool"),
            ]),
        ]),
        f("total_bytes", "int64", "4+", default=-1),
        f("usable_bytes", "int64", "4+", default=-1),
    ]),
])

# SaslAuthenticate (36). v1 session lifetime, v2 flexible.
SASL_AUTHENTICATE_REQUEST = message("SaslAuthenticateRequest", "0-2", "2+", [
    f("auth_bytes", "bytes"),
])

SASL_AUTHENTICATE_RESPONSE = message("SaslAuthenticateResponse", "0-2", "2+", [
    f("error_code", "int16"),
    f("error_message", "string", nullable="0+"),
    f("auth_bytes", "bytes"),
    f("session_lifetime_ms", "int64", "1+", default=0),
])

# DescribeUserScramCredentials (50) and AlterUserScramCredentials (51), KIP-554: v0 only,
# flexible. Mechanism is Kafka's ScramMechanism code (1 SCRAM-SHA-256, 2 SCRAM-SHA-512); the
# client sends the salted password, never the password.
DESCRIBE_USER_SCRAM_CREDENTIALS_REQUEST = message("DescribeUserScramCredentialsRequest", "0", "0+", [
    arr("users", [
        f("name", "string"),
    ], nullable="0+"),
])

DESCRIBE_USER_SCRAM_CREDENTIALS_RESPONSE = message("DescribeUserScramCredentialsResponse", "0", "0+", [
    f("throttle_time_ms", "int32"),
    f("error_code", "int16"),
    f("error_message", "string", nullable="0+"),
    arr("results", [
        f("user", "string"),
        f("error_code", "int16"),
        f("error_message", "string", nullable="0+"),
        arr("credential_infos", [
            f("mechanism", "int8"),
            f("iterations", "int32"),
        ]),
    ]),
])

ALTER_USER_SCRAM_CREDENTIALS_REQUEST = message("AlterUserScramCredentialsRequest", "0", "0+", [
    arr("deletions", [
        f("name", "string"),
        f("mechanism", "int8"),
    ]),
    arr("upsertions", [
        f("name", "string"),
        f("mechanism", "int8"),
        f("iterations", "int32"),
        f("salt", "bytes"),
        f("salted_password", "bytes"),
    ]),
])

ALTER_USER_SCRAM_CREDENTIALS_RESPONSE = message("AlterUserScramCredentialsResponse", "0", "0+", [
    f("throttle_time_ms", "int32"),
    arr("results", [
        f("user", "string"),
        f("error_code", "int16"),
        f("error_message", "string", nullable="0+"),
    ]),
])

# CreatePartitions (37). v1 same as v0, v2 flexible, v3 may answer THROTTLING_QUOTA_EXCEEDED.
# assignments (nullable) lists the brokers of each new partition only.
CREATE_PARTITIONS_REQUEST = message("CreatePartitionsRequest", "0-3", "2+", [
    arr("topics", [
        f("name", "string"),
        f("count", "int32"),
        arr("assignments", [
            f("broker_ids", "[]int32"),
        ], nullable="0+"),
    ]),
    f("timeout_ms", "int32"),
    f("validate_only", "bool"),
])

CREATE_PARTITIONS_RESPONSE = message("CreatePartitionsResponse", "0-3", "2+", [
    f("throttle_time_ms", "int32"),
    arr("results", [
        f("name", "string"),
        f("error_code", "int16"),
        f("error_message", "string", nullable="0+", default=None),
    ]),
])

# IncrementalAlterConfigs (44). v1 flexible. config_operation: 0 set, 1 delete, 2 append,
# 3 subtract (KIP-339).
INCREMENTAL_ALTER_CONFIGS_REQUEST = message("IncrementalAlterConfigsRequest", "0-1", "1+", [
    arr("resources", [
        f("resource_type", "int8"),
        f("resource_name", "string"),
        arr("configs", [
            f("name", "string"),
            f("config_operation", "int8"),
            f("value", "string", nullable="0+"),
        ]),
    ]),
    f("validate_only", "bool"),
])

INCREMENTAL_ALTER_CONFIGS_RESPONSE = message("IncrementalAlterConfigsResponse", "0-1", "1+", [
    f("throttle_time_ms", "int32"),
    arr("responses", [
        f("error_code", "int16"),
        f("error_message", "string", nullable="0+"),
        f("resource_type", "int8"),
        f("resource_name", "string"),
    ]),
])

# DeleteGroups (42). v1 same as v0, v2 flexible. Only empty groups can be deleted.
DELETE_GROUPS_REQUEST = message("DeleteGroupsRequest", "0-2", "2+", [
    f("groups_names", "[]string"),
])

DELETE_GROUPS_RESPONSE = message("DeleteGroupsResponse", "0-2", "2+", [
    f("throttle_time_ms", "int32"),
    arr("results", [
        f("group_id", "string"),
        f("error_code", "int16"),
    ]),
])

# OffsetDelete (47). One version, never flexible (KIP-496). The top-level error comes first.
OFFSET_DELETE_REQUEST = message("OffsetDeleteRequest", "0", "none", [
    f("group_id", "string"),
    arr("topics", [
        f("name", "string"),
        arr("partitions", [
            f("partition_index", "int32"),
        ]),
    ]),
])

OFFSET_DELETE_RESPONSE = message("OffsetDeleteResponse", "0", "none", [
    f("error_code", "int16"),
    f("throttle_time_ms", "int32"),
    arr("topics", [
        f("name", "string"),
        arr("partitions", [
            f("partition_index", "int32"),
            f("error_code", "int16"),
        ]),
    ]),
])

# DescribeCluster (60). Flexible from v0 (KIP-700); v1 endpoint type (KIP-919), v2 fenced
# brokers (KIP-1073).
DESCRIBE_CLUSTER_REQUEST = message("DescribeClusterRequest", "0-2", "0+", [
    f("include_cluster_authorized_operations", "bool"),
    f("endpoint_type", "int8", "1+", default=1),
    f("include_fenced_brokers", "bool", "2+"),
])

DESCRIBE_CLUSTER_RESPONSE = message("DescribeClusterResponse", "0-2", "0+", [
    f("throttle_time_ms", "int32"),
    f("error_code", "int16"),
    f("error_message", "string", nullable="0+", default=None),
    f("endpoint_type", "int8", "1+", default=1),
    f("cluster_id", "string"),
    f("controller_id", "int32", default=-1),
    arr("brokers", [
        f("broker_id", "int32"),
        f("host", "string"),
        f("port", "int32"),
        f("rack", "string", nullable="0+", default=None),
        f("is_fenced", "bool", "2+"),
    ]),
    f("cluster_authorized_operations", "int32", default=-2147483648),
])

# DescribeProducers (61). Flexible from v0 (KIP-664).
DESCRIBE_PRODUCERS_REQUEST = message("DescribeProducersRequest", "0", "0+", [
    arr("topics", [
        f("name", "string"),
        f("partition_indexes", "[]int32"),
    ]),
])

DESCRIBE_PRODUCERS_RESPONSE = message("DescribeProducersResponse", "0", "0+", [
    f("throttle_time_ms", "int32"),
    arr("topics", [
        f("name", "string"),
        arr("partitions", [
            f("partition_index", "int32"),
            f("error_code", "int16"),
            f("error_message", "string", nullable="0+", default=None),
            arr("active_producers", [
                f("producer_id", "int64"),
                f("producer_epoch", "int32"),
                f("last_sequence", "int32", default=-1),
                f("last_timestamp", "int64", default=-1),
                f("coordinator_epoch", "int32"),
                f("current_txn_start_offset", "int64", default=-1),
            ]),
        ]),
    ]),
])

# DescribeTransactions (65). Flexible from v0 (KIP-664).
DESCRIBE_TRANSACTIONS_REQUEST = message("DescribeTransactionsRequest", "0", "0+", [
    f("transactional_ids", "[]string"),
])

DESCRIBE_TRANSACTIONS_RESPONSE = message("DescribeTransactionsResponse", "0", "0+", [
    f("throttle_time_ms", "int32"),
    arr("transaction_states", [
        f("error_code", "int16"),
        f("transactional_id", "string"),
        f("transaction_state", "string"),
        f("transaction_timeout_ms", "int32"),
        f("transaction_start_time_ms", "int64"),
        f("producer_id", "int64"),
        f("producer_epoch", "int16"),
        arr("topics", [
            f("topic", "string"),
            f("partitions", "[]int32"),
        ]),
    ]),
])

# ListTransactions (66). Flexible from v0 (KIP-664); v1 duration filter (KIP-994). v2's
# transactional-id pattern (KIP-1152) is not spoken.
LIST_TRANSACTIONS_REQUEST = message("ListTransactionsRequest", "0-1", "0+", [
    f("state_filters", "[]string"),
    f("producer_id_filters", "[]int64"),
    f("duration_filter", "int64", "1+", default=-1),
])

LIST_TRANSACTIONS_RESPONSE = message("ListTransactionsResponse", "0-1", "0+", [
    f("throttle_time_ms", "int32"),
    f("error_code", "int16"),
    f("unknown_state_filters", "[]string"),
    arr("transaction_states", [
        f("transactional_id", "string"),
        f("producer_id", "int64"),
        f("transaction_state", "string"),
    ]),
])

# Consumer group member metadata (JoinGroup protocols[].metadata), with its own int16 version:
# v1 owned partitions, v2 generation id, v3 rack id. Never flexible.
CONSUMER_PROTOCOL_SUBSCRIPTION = message("ConsumerProtocolSubscription", "0-3", "none", [
    f("topics", "[]string"),
    f("user_data", "bytes", nullable="0+", default=None),
    arr("owned_partitions", [
        f("topic", "string", "1+"),
        f("partitions", "[]int32", "1+"),
    ], "1+"),
    f("generation_id", "int32", "2+", default=-1),
    f("rack_id", "string", "3+", nullable="3+", default=None),
])

# Consumer group assignment (SyncGroup assignment bytes), with its own int16 version.
CONSUMER_PROTOCOL_ASSIGNMENT = message("ConsumerProtocolAssignment", "0-3", "none", [
    arr("assigned_partitions", [
        f("topic", "string"),
        f("partitions", "[]int32"),
    ]),
    f("user_data", "bytes", nullable="0+", default=None),
])


#: Request definitions by API key.
REQUESTS: dict[ApiKey, MessageSpec] = {
    ApiKey.PRODUCE: PRODUCE_REQUEST,
    ApiKey.FETCH: FETCH_REQUEST,
    ApiKey.LIST_OFFSETS: LIST_OFFSETS_REQUEST,
    ApiKey.METADATA: METADATA_REQUEST,
    ApiKey.OFFSET_COMMIT: OFFSET_COMMIT_REQUEST,
    ApiKey.OFFSET_FETCH: OFFSET_FETCH_REQUEST,
    ApiKey.FIND_COORDINATOR: FIND_COORDINATOR_REQUEST,
    ApiKey.JOIN_GROUP: JOIN_GROUP_REQUEST,
    ApiKey.HEARTBEAT: HEARTBEAT_REQUEST,
    ApiKey.LEAVE_GROUP: LEAVE_GROUP_REQUEST,
    ApiKey.SYNC_GROUP: SYNC_GROUP_REQUEST,
    ApiKey.DESCRIBE_GROUPS: DESCRIBE_GROUPS_REQUEST,
    ApiKey.LIST_GROUPS: LIST_GROUPS_REQUEST,
    ApiKey.SASL_HANDSHAKE: SASL_HANDSHAKE_REQUEST,
    ApiKey.API_VERSIONS: API_VERSIONS_REQUEST,
    ApiKey.CREATE_TOPICS: CREATE_TOPICS_REQUEST,
    ApiKey.DELETE_TOPICS: DELETE_TOPICS_REQUEST,
    ApiKey.INIT_PRODUCER_ID: INIT_PRODUCER_ID_REQUEST,
    ApiKey.OFFSET_FOR_LEADER_EPOCH: OFFSET_FOR_LEADER_EPOCH_REQUEST,
    ApiKey.ADD_PARTITIONS_TO_TXN: ADD_PARTITIONS_TO_TXN_REQUEST,
    ApiKey.ADD_OFFSETS_TO_TXN: ADD_OFFSETS_TO_TXN_REQUEST,
    ApiKey.END_TXN: END_TXN_REQUEST,
    ApiKey.TXN_OFFSET_COMMIT: TXN_OFFSET_COMMIT_REQUEST,
    ApiKey.DESCRIBE_CONFIGS: DESCRIBE_CONFIGS_REQUEST,
    ApiKey.SASL_AUTHENTICATE: SASL_AUTHENTICATE_REQUEST,
    ApiKey.DELETE_RECORDS: DELETE_RECORDS_REQUEST,
    ApiKey.ALTER_CONFIGS: ALTER_CONFIGS_REQUEST,
    ApiKey.DESCRIBE_LOG_DIRS: DESCRIBE_LOG_DIRS_REQUEST,
    ApiKey.CREATE_PARTITIONS: CREATE_PARTITIONS_REQUEST,
    ApiKey.INCREMENTAL_ALTER_CONFIGS: INCREMENTAL_ALTER_CONFIGS_REQUEST,
    ApiKey.DELETE_GROUPS: DELETE_GROUPS_REQUEST,
    ApiKey.OFFSET_DELETE: OFFSET_DELETE_REQUEST,
    ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS: DESCRIBE_USER_SCRAM_CREDENTIALS_REQUEST,
    ApiKey.ALTER_USER_SCRAM_CREDENTIALS: ALTER_USER_SCRAM_CREDENTIALS_REQUEST,
    ApiKey.DESCRIBE_CLUSTER: DESCRIBE_CLUSTER_REQUEST,
    ApiKey.DESCRIBE_PRODUCERS: DESCRIBE_PRODUCERS_REQUEST,
    ApiKey.DESCRIBE_TRANSACTIONS: DESCRIBE_TRANSACTIONS_REQUEST,
    ApiKey.LIST_TRANSACTIONS: LIST_TRANSACTIONS_REQUEST,
    ApiKey.DESCRIBE_ACLS: DESCRIBE_ACLS_REQUEST,
    ApiKey.CREATE_ACLS: CREATE_ACLS_REQUEST,
    ApiKey.DELETE_ACLS: DELETE_ACLS_REQUEST,
}

#: Response definitions by API key.
RESPONSES: dict[ApiKey, MessageSpec] = {
    ApiKey.PRODUCE: PRODUCE_RESPONSE,
    ApiKey.FETCH: FETCH_RESPONSE,
    ApiKey.LIST_OFFSETS: LIST_OFFSETS_RESPONSE,
    ApiKey.METADATA: METADATA_RESPONSE,
    ApiKey.OFFSET_COMMIT: OFFSET_COMMIT_RESPONSE,
    ApiKey.OFFSET_FETCH: OFFSET_FETCH_RESPONSE,
    ApiKey.FIND_COORDINATOR: FIND_COORDINATOR_RESPONSE,
    ApiKey.JOIN_GROUP: JOIN_GROUP_RESPONSE,
    ApiKey.HEARTBEAT: HEARTBEAT_RESPONSE,
    ApiKey.LEAVE_GROUP: LEAVE_GROUP_RESPONSE,
    ApiKey.SYNC_GROUP: SYNC_GROUP_RESPONSE,
    ApiKey.DESCRIBE_GROUPS: DESCRIBE_GROUPS_RESPONSE,
    ApiKey.LIST_GROUPS: LIST_GROUPS_RESPONSE,
    ApiKey.SASL_HANDSHAKE: SASL_HANDSHAKE_RESPONSE,
    ApiKey.API_VERSIONS: API_VERSIONS_RESPONSE,
    ApiKey.CREATE_TOPICS: CREATE_TOPICS_RESPONSE,
    ApiKey.DELETE_TOPICS: DELETE_TOPICS_RESPONSE,
    ApiKey.INIT_PRODUCER_ID: INIT_PRODUCER_ID_RESPONSE,
    ApiKey.OFFSET_FOR_LEADER_EPOCH: OFFSET_FOR_LEADER_EPOCH_RESPONSE,
    ApiKey.ADD_PARTITIONS_TO_TXN: ADD_PARTITIONS_TO_TXN_RESPONSE,
    ApiKey.ADD_OFFSETS_TO_TXN: ADD_OFFSETS_TO_TXN_RESPONSE,
    ApiKey.END_TXN: END_TXN_RESPONSE,
    ApiKey.TXN_OFFSET_COMMIT: TXN_OFFSET_COMMIT_RESPONSE,
    ApiKey.DESCRIBE_CONFIGS: DESCRIBE_CONFIGS_RESPONSE,
    ApiKey.SASL_AUTHENTICATE: SASL_AUTHENTICATE_RESPONSE,
    ApiKey.DELETE_RECORDS: DELETE_RECORDS_RESPONSE,
    ApiKey.ALTER_CONFIGS: ALTER_CONFIGS_RESPONSE,
    ApiKey.DESCRIBE_LOG_DIRS: DESCRIBE_LOG_DIRS_RESPONSE,
    ApiKey.CREATE_PARTITIONS: CREATE_PARTITIONS_RESPONSE,
    ApiKey.INCREMENTAL_ALTER_CONFIGS: INCREMENTAL_ALTER_CONFIGS_RESPONSE,
    ApiKey.DELETE_GROUPS: DELETE_GROUPS_RESPONSE,
    ApiKey.OFFSET_DELETE: OFFSET_DELETE_RESPONSE,
    ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS: DESCRIBE_USER_SCRAM_CREDENTIALS_RESPONSE,
    ApiKey.ALTER_USER_SCRAM_CREDENTIALS: ALTER_USER_SCRAM_CREDENTIALS_RESPONSE,
    ApiKey.DESCRIBE_CLUSTER: DESCRIBE_CLUSTER_RESPONSE,
    ApiKey.DESCRIBE_PRODUCERS: DESCRIBE_PRODUCERS_RESPONSE,
    ApiKey.DESCRIBE_TRANSACTIONS: DESCRIBE_TRANSACTIONS_RESPONSE,
    ApiKey.LIST_TRANSACTIONS: LIST_TRANSACTIONS_RESPONSE,
    ApiKey.DESCRIBE_ACLS: DESCRIBE_ACLS_RESPONSE,
    ApiKey.CREATE_ACLS: CREATE_ACLS_RESPONSE,
    ApiKey.DELETE_ACLS: DELETE_ACLS_RESPONSE,
}
