"""Settings of one broker, with Kafka's names and defaults where Kafka has them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flowbus.broker.errors import BrokerConfigError
from flowbus.broker.group_coordinator import GroupConfig
from flowbus.broker.security.acls import AuthorizerConfig
from flowbus.broker.txn_coordinator import TxnConfig
from flowbus.log.config import LONG_MAX, TopicConfig


def parse_host_port(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (IPv6 hosts in brackets).

    Raises:
        BrokerConfigError: no port, or a port outside 0..65535.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise BrokerConfigError(f"expected HOST:PORT, got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise BrokerConfigError(f"port {port} is out of range")
    return host.strip("[]") or "127.0.0.1", port


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Everything :class:`flowbus.broker.core.BrokerCore` and the server need to know.

    ``advertised_host``/``advertised_port`` are what Metadata and FindCoordinator tell clients
    to connect to; the server fills them from the listen address unless ``--advertise`` is given.
    """

    data_dir: Path
    node_id: int = 0
    cluster_id: str = "flowbus-cluster"
    advertised_host: str = "127.0.0.1"
    advertised_port: int = 9092
    auto_create_topics_enable: bool = True
    auto_create_topics_partitions: int = 1
    #: Partitions of ``__consumer_offsets``; one is plenty for a single broker.
    offsets_topic_num_partitions: int = 1
    groups: GroupConfig = field(default_factory=GroupConfig)
    #: Transaction coordinator limits (``transaction.max.timeout.ms``).
    transactions: TxnConfig = field(default_factory=TxnConfig)
    #: How often the log (flush, roll, retention, compaction) and the groups are ticked.
    tick_interval_ms: int = 100
    #: Upper bound of a Fetch long poll, whatever the client asks (it must end before the
    #: client's own request timeout).
    fetch_max_wait_ms_max: int = 30_000
    #: Kafka's ``producer.id.expiration.ms``: idempotence state of a producer idle this long is dropped.
    producer_id_expiration_ms: int = 86_400_000
    #: How often producer state is snapshotted (also at clean shutdown), bounding the log a
    #: restart must replay to rebuild it.
    producer_snapshot_interval_ms: int = 60_000
    #: Cap on one Fetch response's records, whatever the client asks.
    fetch_response_max_bytes: int = 64 * 1024 * 1024
    #: Kafka's ``log.flush.interval.messages``: the default of every topic's ``flush.messages``
    #: (a topic's own setting wins). 1 = every produce is answered only after an fsync covers
    #: it (group commit, see ``group_commit.py``); Kafka's default is "never".
    log_flush_interval_messages: int = LONG_MAX
    #: File descriptors the partition logs may hold; None derives it from RLIMIT_NOFILE (the
    #: soft limit minus a quarter, at least 64, kept for sockets). CreateTopics beyond it is
    #: refused with POLICY_VIOLATION; at start-up, partitions beyond it open on first use.
    log_fd_budget: int | None = None
    #: Kafka's ``log.retention.ms``: the default of every topic's ``retention.ms`` (-1 keeps
    #: everything). The test harness's broker uses -1: its records carry the app's manual clock,
    #: which the core's real clock would take for years-old data and delete at the next tick.
    log_retention_ms: int = 604_800_000
    #: The ACL authorizer (``docs/security.md``); None (the default): every client may do
    #: everything, as before issue 14. Set: deny unless an ACL allows (or a super user).
    authorizer: AuthorizerConfig | None = None

    def topic_defaults(self) -> TopicConfig:
        """The topic config defaults this broker's settings imply (for the LogManager)."""
        if self.log_flush_interval_messages < 1:
            raise BrokerConfigError(
                f"log.flush.interval.messages must be at least 1, got {self.log_flush_interval_messages}"
            )
        return TopicConfig(flush_messages=self.log_flush_interval_messages, retention_ms=self.log_retention_ms)
