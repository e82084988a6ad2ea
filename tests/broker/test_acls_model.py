"""The ACL model, the authorizer's rules and the API -> operation table (issue 14, item 3).

No broker here: ``flowbus.broker.security.acls`` has no I/O besides its file, and the table
in ``flowbus.broker.authz`` must cover every advertised API.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowbus.broker.authz import GUARDS
from flowbus.broker.security.acls import (
    ACLS_FILE,
    DECISION_CACHE_ENTRIES_MAX,
    AclBinding,
    AclError,
    AclFilter,
    AclStore,
    Authorizer,
    AuthorizerConfig,
    PatternType,
    Permission,
    ResourceType,
    parse_super_users,
)
from flowbus.broker.security.acls import AclOperation as Op
from flowbus.protocol.api import SUPPORTED_VERSIONS

TOPIC, GROUP, CLUSTER = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.CLUSTER
LIT, PRE = PatternType.LITERAL, PatternType.PREFIXED
ALLOW, DENY = Permission.ALLOW, Permission.DENY


def acl(name: str, op: Op, *, kind: ResourceType = TOPIC, pattern: PatternType = LIT, who: str = "User:alice",
        host: str = "*", permission: Permission = ALLOW) -> AclBinding:
    return AclBinding(kind, name, pattern, who, host, op, permission)


def authorizer(tmp_path: Path, *bindings: AclBinding, **config: object) -> Authorizer:
    store = AclStore(tmp_path / ACLS_FILE)
    store.add(bindings)
    return Authorizer(store, AuthorizerConfig(**config))  # type: ignore[arg-type]


def test_every_advertised_api_has_an_authorization_entry() -> None:
    assert set(SUPPORTED_VERSIONS) <= set(GUARDS), set(SUPPORTED_VERSIONS) - set(GUARDS)


def test_deny_by_default_and_literal_prefixed_wildcard(tmp_path: Path) -> None:
    auth = authorizer(tmp_path, acl("orders", Op.READ), acl("app-", Op.WRITE, pattern=PRE),
                      acl("*", Op.DESCRIBE, who="User:*"))
    ok = auth.authorize
    assert ok("User:alice", "10.0.0.1", TOPIC, "orders", Op.READ)
    assert not ok("User:alice", "10.0.0.1", TOPIC, "orders2", Op.READ)
    assert ok("User:alice", "h", TOPIC, "app-events", Op.WRITE) and not ok("User:alice", "h", TOPIC, "ap", Op.WRITE)
    assert ok("User:bob", "h", TOPIC, "anything", Op.DESCRIBE) and not ok("User:bob", "h", TOPIC, "anything", Op.READ)
    assert not ok("User:bob", "h", GROUP, "g", Op.READ)  # nothing names it: denied


def test_implied_operations_and_deny_wins(tmp_path: Path) -> None:
    auth = authorizer(tmp_path, acl("t", Op.READ), acl("t", Op.ALTER_CONFIGS), acl("t", Op.ALL, who="User:bob"),
                      acl("t", Op.WRITE, who="User:bob", permission=DENY), acl("t", Op.READ, who="User:carol"),
                      acl("t", Op.READ, who="User:carol", host="10.9.9.9", permission=DENY))
    ok = auth.authorize
    assert ok("User:alice", "h", TOPIC, "t", Op.DESCRIBE)  # READ implies DESCRIBE
    assert ok("User:alice", "h", TOPIC, "t", Op.DESCRIBE_CONFIGS)  # ALTER_CONFIGS implies it
    assert not ok("User:alice", "h", TOPIC, "t", Op.WRITE)
    assert ok("User:bob", "h", TOPIC, "t", Op.READ) and not ok("User:bob", "h", TOPIC, "t", Op.WRITE)
    assert ok("User:carol", "10.0.0.1", TOPIC, "t", Op.READ) and not ok("User:carol", "10.9.9.9", TOPIC, "t", Op.READ)


def test_super_users_and_allow_everyone(tmp_path: Path) -> None:
    auth = authorizer(tmp_path, acl("guarded", Op.READ), super_users=parse_super_users("User:admin;User:ops"),
                      allow_everyone_if_no_acl_found=True)
    assert auth.authorize("User:ops", "h", CLUSTER, "kafka-cluster", Op.ALTER)
    assert auth.authorize("User:bob", "h", TOPIC, "open", Op.WRITE)  # no ACL names it
    assert not auth.authorize("User:bob", "h", TOPIC, "guarded", Op.READ)  # an ACL names it
    # Internal topics: never by allow-everyone or the '*' wildcard, only by ACLs naming them.
    assert not auth.authorize("User:bob", "h", TOPIC, "__consumer_offsets", Op.READ)
    auth.store.add([acl("*", Op.READ, who="User:bob")])
    assert not auth.authorize("User:bob", "h", TOPIC, "__transaction_state", Op.READ)
    auth.store.add([acl("__consumer_offsets", Op.READ, who="User:bob")])
    assert auth.authorize("User:bob", "h", TOPIC, "__consumer_offsets", Op.READ)


def test_cache_follows_changes_and_stays_bounded(tmp_path: Path) -> None:
    auth = authorizer(tmp_path)
    assert not auth.authorize("User:alice", "h", TOPIC, "t", Op.READ)
    auth.store.add([acl("t", Op.READ)])
    assert auth.authorize("User:alice", "h", TOPIC, "t", Op.READ)
    auth.store.remove(AclFilter(TOPIC, "t"))
    assert not auth.authorize("User:alice", "h", TOPIC, "t", Op.READ)
    for index in range(DECISION_CACHE_ENTRIES_MAX + 10):
        auth.authorize("User:alice", "h", TOPIC, f"t{index}", Op.READ)
    assert len(auth._cache) <= DECISION_CACHE_ENTRIES_MAX


def test_filters_and_persistence(tmp_path: Path) -> None:
    store = AclStore(tmp_path / ACLS_FILE)
    store.add([acl("app-", Op.READ, pattern=PRE), acl("app-orders", Op.WRITE), acl("*", Op.DESCRIBE)])
    store.save()
    again = AclStore(tmp_path / ACLS_FILE)
    assert again.bindings() == store.bindings()
    match = AclFilter(TOPIC, "app-orders", PatternType.MATCH)
    assert len(again.bindings(match)) == 3
    assert len(again.bindings(AclFilter(TOPIC, "app-orders", LIT))) == 1
    assert len(again.bindings(AclFilter(operation=Op.READ))) == 1
    assert [b.name for b in again.remove(AclFilter(pattern_type=PRE))] == ["app-"]
    assert json.loads((tmp_path / ACLS_FILE).read_text())["version"] == 1


@pytest.mark.parametrize("bad", [
    acl("t", Op.IDEMPOTENT_WRITE),  # not a topic operation
    acl("other", Op.ALTER, kind=CLUSTER),  # the cluster is kafka-cluster
    acl("t", Op.READ, who="alice"),  # not TYPE:NAME
    acl("t", Op.READ, pattern=PatternType.MATCH),
    acl("t", Op.ANY),
    acl("", Op.READ),
    AclBinding(ResourceType.USER, "u", LIT, "User:a", "*", Op.ALL, ALLOW),
])
def test_invalid_bindings_are_refused(bad: AclBinding, tmp_path: Path) -> None:
    with pytest.raises(AclError):
        AclStore(tmp_path / ACLS_FILE).add([bad])


def test_a_damaged_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / ACLS_FILE).write_text('{"version": 1, "acls": [{"resource_type": "TOPIC"}]}')
    with pytest.raises(AclError, match="acls.json"):
        AclStore(tmp_path / ACLS_FILE)
    with pytest.raises(AclError):
        parse_super_users("admin")
