"""``flowbus acls add|list|remove``: the ACLs of a flowbus broker (``docs/security.md``).

The options are those of Kafka's ``kafka-acls.sh``: ``--allow-principal User:alice``,
``--deny-principal``, ``--allow-host``/``--deny-host``, ``--operation Read`` (repeatable), one
or more of ``--topic``, ``--group``, ``--transactional-id``, ``--cluster``, and
``--resource-pattern-type literal|prefixed`` (``list`` and ``remove`` also take ``any`` and
``match``).

As ``flowbus users``, two ways to reach them:

* ``--data-dir DIR`` (default ``./flowbus-data``): edit ``DIR/acls.json`` of a **stopped**
  broker, under the data directory's lock (the broker reads the file at start-up);
* ``--bootstrap URL``: a running broker with ``--authorizer on``, through CreateAcls,
  DescribeAcls and DeleteAcls (the principal needs ALTER / DESCRIBE on the cluster).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

# The --bootstrap plumbing of `flowbus users` (one admin client, futures waited with a timeout).
from flowbus.cli.common import BrokerUrlOption, locked_data_dir
from flowbus.cli.users import DEFAULT_DATA_DIR, REQUEST_TIMEOUT_S, _admin, _wait

OPERATIONS = ["All", "Read", "Write", "Create", "Delete", "Alter", "Describe", "ClusterAction",
              "DescribeConfigs", "AlterConfigs", "IdempotentWrite"]


def _operation_code(name: str) -> Any:
    from flowbus.broker.security.acls import AclOperation

    normalized = "".join(c for c in name.upper() if c.isalnum())
    for op in AclOperation:
        if op.name.replace("_", "") == normalized:
            return op
    raise click.BadParameter(f"unknown operation {name!r} (one of {', '.join(OPERATIONS)})")


def _resource_options(func: Any) -> Any:
    for decorator in reversed([
        click.option("--topic", "topics", multiple=True, help="A topic (repeatable; '*' for every topic)."),
        click.option("--group", "groups", multiple=True, help="A consumer group (repeatable; '*': every group)."),
        click.option("--transactional-id", "transactional_ids", multiple=True,
                     help="A transactional id (repeatable; '*': every one)."),
        click.option("--cluster", is_flag=True, help="The cluster resource (kafka-cluster)."),
        click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATA_DIR,
                     show_default=True, help="Data directory of a stopped broker."),
        click.option("--bootstrap", metavar="URL", default=None, cls=BrokerUrlOption,
                     help="A running broker (HOST:PORT or kafka://... with security parameters)."),
    ]):
        func = decorator(func)
    return func


def _resources(topics: tuple[str, ...], groups: tuple[str, ...], transactional_ids: tuple[str, ...],
               cluster: bool) -> list[tuple[Any, str]]:
    from flowbus.broker.security.acls import CLUSTER_NAME, ResourceType

    found = [(ResourceType.TOPIC, t) for t in topics] + [(ResourceType.GROUP, g) for g in groups]
    found += [(ResourceType.TRANSACTIONAL_ID, t) for t in transactional_ids]
    if cluster:
        found.append((ResourceType.CLUSTER, CLUSTER_NAME))
    return found


@click.group("acls")
def acls() -> None:
    """Manage the ACLs of a flowbus broker (docs/security.md)."""


@acls.command("add")
@click.option("--allow-principal", multiple=True, metavar="User:NAME", help="Principal the ACLs allow (repeatable).")
@click.option("--deny-principal", multiple=True, metavar="User:NAME", help="Principal the ACLs deny (repeatable).")
@click.option("--allow-host", multiple=True, help="Host of the allowing ACLs (repeatable) [default: *].")
@click.option("--deny-host", multiple=True, help="Host of the denying ACLs (repeatable) [default: *].")
@click.option("--operation", "operations", multiple=True, required=True, metavar="OP",
              help=f"Repeatable: {', '.join(OPERATIONS)}.")
@click.option("--resource-pattern-type", type=click.Choice(["literal", "prefixed"], case_sensitive=False),
              default="literal", show_default=True)
@_resource_options
def add(allow_principal: tuple[str, ...], deny_principal: tuple[str, ...], allow_host: tuple[str, ...],
        deny_host: tuple[str, ...], operations: tuple[str, ...], resource_pattern_type: str,
        topics: tuple[str, ...], groups: tuple[str, ...], transactional_ids: tuple[str, ...], cluster: bool,
        data_dir: Path, bootstrap: str | None) -> None:
    """Add ACLs: every principal x host x operation x resource given."""
    from flowbus.broker.security.acls import (
        AclBinding,
        AclError,
        PatternType,
        Permission,
    )

    resources = _resources(topics, groups, transactional_ids, cluster)
    if not resources:
        raise click.UsageError("name a resource: --topic, --group, --transactional-id or --cluster")
    if not allow_principal and not deny_principal:
        raise click.UsageError("give --allow-principal or --deny-principal")
    pattern = PatternType[resource_pattern_type.upper()]
    ops = [_operation_code(o) for o in operations]
    bindings: list[AclBinding] = []
    for permission, principals, hosts in ((Permission.ALLOW, allow_principal, allow_host),
                                          (Permission.DENY, deny_principal, deny_host)):
        for principal in principals:
            for host in hosts or ("*",):
                for kind, name in resources:
                    for op in ops:
                        bindings.append(AclBinding(kind, name, pattern, principal, host, op, permission))
    try:
        for binding in bindings:
            binding.validate()
    except AclError as exc:
        raise click.UsageError(str(exc)) from exc
    if bootstrap is not None:
        _create_online(bootstrap, bindings)
    else:
        with _acl_store(data_dir) as store:
            store.add(bindings)
            store.save()
    for binding in bindings:
        click.echo(f"added {binding.describe()}")


def _filters(topics: tuple[str, ...], groups: tuple[str, ...], transactional_ids: tuple[str, ...], cluster: bool,
             pattern: str, principal: str | None, operations: tuple[str, ...]) -> list[Any]:
    from flowbus.broker.security.acls import AclFilter, AclOperation, PatternType

    pattern_type = PatternType[pattern.upper()]
    ops = [_operation_code(o) for o in operations] or [AclOperation.ANY]
    resources: list[tuple[Any, str | None]] = list(_resources(topics, groups, transactional_ids, cluster))
    if not resources:
        from flowbus.broker.security.acls import ResourceType
        resources = [(ResourceType.ANY, None)]
    return [AclFilter(kind, name, pattern_type, principal, None, op) for kind, name in resources for op in ops]


@acls.command("list")
@click.option("--principal", default=None, metavar="User:NAME", help="Only ACLs of this principal.")
@click.option("--resource-pattern-type", type=click.Choice(["any", "literal", "prefixed", "match"],
              case_sensitive=False), default="any", show_default=True,
              help="match: every ACL that applies to the named resources (wildcard and prefixes too).")
@_resource_options
def list_acls(principal: str | None, resource_pattern_type: str, topics: tuple[str, ...], groups: tuple[str, ...],
              transactional_ids: tuple[str, ...], cluster: bool, data_dir: Path, bootstrap: str | None) -> None:
    """List ACLs (all, or those of the resources and principal given)."""
    filters = _filters(topics, groups, transactional_ids, cluster, resource_pattern_type, principal, ())
    if bootstrap is not None:
        found = _describe_online(bootstrap, filters)
    else:
        with _acl_store(data_dir) as store:
            found = list(dict.fromkeys(b for flt in filters for b in store.bindings(flt)))
    for binding in found:
        click.echo(binding.describe())


@acls.command("remove")
@click.option("--principal", default=None, metavar="User:NAME", help="Only ACLs of this principal.")
@click.option("--operation", "operations", multiple=True, metavar="OP", help="Only these operations (repeatable).")
@click.option("--resource-pattern-type", type=click.Choice(["any", "literal", "prefixed", "match"],
              case_sensitive=False), default="literal", show_default=True)
@_resource_options
def remove(principal: str | None, operations: tuple[str, ...], resource_pattern_type: str, topics: tuple[str, ...],
           groups: tuple[str, ...], transactional_ids: tuple[str, ...], cluster: bool, data_dir: Path,
           bootstrap: str | None) -> None:
    """Remove the ACLs of the resources given (optionally only a principal's or some operations)."""
    if not _resources(topics, groups, transactional_ids, cluster):
        raise click.UsageError("name a resource: --topic, --group, --transactional-id or --cluster")
    filters = _filters(topics, groups, transactional_ids, cluster, resource_pattern_type, principal, operations)
    if bootstrap is not None:
        gone = _delete_online(bootstrap, filters)
    else:
        with _acl_store(data_dir) as store:
            gone = [b for flt in filters for b in store.remove(flt)]
            store.save()
    for binding in gone:
        click.echo(f"removed {binding.describe()}")
    if not gone:
        click.echo("no matching ACL")


@contextlib.contextmanager
def _acl_store(data_dir: Path) -> Iterator[Any]:
    """The ACL store of a stopped broker, its data directory locked meanwhile (the lock the
    broker's log manager holds: taking it proves no broker uses the file at the same time)."""
    from flowbus.broker.security.acls import ACLS_FILE, AclError, AclStore

    with locked_data_dir(data_dir):
        try:
            yield AclStore(data_dir / ACLS_FILE)
        except AclError as exc:
            raise click.ClickException(str(exc)) from exc


# -- --bootstrap: confluent-kafka's admin client ------------------------------------------------

def _ck(binding_or_filter: Any, *, is_filter: bool) -> Any:
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    b = binding_or_filter
    cls = AclBindingFilter if is_filter else AclBinding
    return cls(ResourceType(int(b.resource_type)), b.name, ResourcePatternType(int(b.pattern_type)), b.principal,
               b.host, AclOperation(int(b.operation)), AclPermissionType(int(b.permission)))


def _ours(ck: Any) -> Any:
    from flowbus.broker.security.acls import (
        AclBinding,
        AclOperation,
        PatternType,
        Permission,
        ResourceType,
    )

    return AclBinding(ResourceType(ck.restype.value), ck.name, PatternType(ck.resource_pattern_type.value),
                      ck.principal, ck.host, AclOperation(ck.operation.value), Permission(ck.permission_type.value))


def _create_online(bootstrap: str, bindings: list[Any]) -> None:
    admin = _admin(bootstrap)  # held until the futures are done: destroying it fails them
    results = _wait(admin.create_acls([_ck(b, is_filter=False) for b in bindings], request_timeout=REQUEST_TIMEOUT_S))
    failed = [f"{_ours(k).describe()}: {v}" for k, v in results.items() if v is not None]
    if failed:
        raise click.ClickException("CreateAcls failed: " + "; ".join(failed))


def _describe_online(bootstrap: str, filters: list[Any]) -> list[Any]:
    admin = _admin(bootstrap)
    found: dict[Any, None] = {}
    for flt in filters:
        try:
            answer = admin.describe_acls(_ck(flt, is_filter=True), request_timeout=REQUEST_TIMEOUT_S).result(
                timeout=REQUEST_TIMEOUT_S)
        except Exception as exc:
            raise click.ClickException(f"DescribeAcls failed: {exc}") from exc
        found.update(dict.fromkeys(_ours(b) for b in answer))
    return list(found)


def _delete_online(bootstrap: str, filters: list[Any]) -> list[Any]:
    admin = _admin(bootstrap)
    results = _wait(admin.delete_acls([_ck(f, is_filter=True) for f in filters], request_timeout=REQUEST_TIMEOUT_S))
    gone: list[Any] = []
    for answer in results.values():
        if not isinstance(answer, list):
            raise click.ClickException(f"DeleteAcls failed: {answer}")
        gone += [_ours(b) for b in answer]
    return gone
