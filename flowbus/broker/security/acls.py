"""Kafka's ACL model and the broker's authorizer (issue 14, item 3; ``docs/security.md``).

An ACL binding is (resource type, resource name, pattern type, principal, host, operation,
permission), with Kafka's codes so the admin APIs carry them unchanged:

* resource types TOPIC, GROUP, CLUSTER (always named ``kafka-cluster``), TRANSACTIONAL_ID;
* patterns LITERAL (the exact name, or ``*`` for every resource of the type) and PREFIXED;
* principal ``User:NAME`` or ``User:*``, host an address or ``*``;
* permission ALLOW or DENY: a matching DENY always wins over any ALLOW.

As Kafka's authorizer: super users may do everything; READ, WRITE, DELETE and ALTER imply
DESCRIBE, ALTER_CONFIGS implies DESCRIBE_CONFIGS, ALL matches every operation; with no ACL on a
resource the answer is no, unless ``allow.everyone.if.no.acl.found`` is set. One flowbus
hardening: the internal topics (``__consumer_offsets``, ``__transaction_state``) are matched
only by ACLs that name them (a literal name or a prefix), never by the ``*`` wildcard, and
allow-everyone does not apply to them, so a catch-all grant does not expose every group's
offsets and every producer's transactions.

The ACLs live in ``acls.json`` in the data directory, replaced atomically (written to a
temporary file, fsynced, renamed, the directory fsynced) by the broker (CreateAcls/DeleteAcls)
and by ``flowbus acls`` on a stopped broker. A file rather than a compacted ``__acls`` topic:
one broker, a few hundred bindings at most in practice, read once at start-up, and editable
offline under the data directory's lock like ``credentials.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from flowbus.broker.security.errors import SecurityConfigError
from flowbus.broker.security.files import write_private_file

#: The file's name in the broker's data directory.
ACLS_FILE = "acls.json"
FORMAT_VERSION = 1
#: Bindings the store holds at most (the file is read whole and prefixed patterns are scanned).
ACLS_MAX = 100_000
#: An ACL file larger than this is refused at load.
ACLS_FILE_BYTES_MAX = 64 * 1024 * 1024
#: Cached decisions at most; the cache is emptied when full and on every ACL change.
DECISION_CACHE_ENTRIES_MAX = 65_536
#: Longest principal, host or resource name accepted in a binding.
ACL_FIELD_CHARS_MAX = 1_024
#: Kafka's one name of the CLUSTER resource.
CLUSTER_NAME = "kafka-cluster"
WILDCARD = "*"
WILDCARD_PRINCIPAL = "User:*"
#: Topics only the broker writes; see the module docstring for how ACLs match them.
INTERNAL_TOPICS = frozenset({"__consumer_offsets", "__transaction_state"})


class AclError(SecurityConfigError):
    """An ACL that cannot be stored (bad field, unknown code) or an unreadable ACL file."""


class ResourceType(IntEnum):
    """Kafka's ``ResourceType`` codes."""

    UNKNOWN = 0
    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5
    DELEGATION_TOKEN = 6
    USER = 7


class PatternType(IntEnum):
    """Kafka's ``PatternType`` codes (KIP-290). ANY and MATCH exist in filters only."""

    UNKNOWN = 0
    ANY = 1
    MATCH = 2
    LITERAL = 3
    PREFIXED = 4


class AclOperation(IntEnum):
    """Kafka's ``AclOperation`` codes; also the bit numbers of KIP-430 authorized operations."""

    UNKNOWN = 0
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12


class Permission(IntEnum):
    """Kafka's ``AclPermissionType`` codes."""

    UNKNOWN = 0
    ANY = 1
    DENY = 2
    ALLOW = 3


Op = AclOperation
#: Resource types flowbus authorizes, and the operations an ACL on each may name (besides
#: ALL), as Kafka's ``AclEntry.supportedOperations``.
SUPPORTED_OPERATIONS: dict[ResourceType, frozenset[AclOperation]] = {
    ResourceType.TOPIC: frozenset({Op.READ, Op.WRITE, Op.CREATE, Op.DELETE, Op.ALTER, Op.DESCRIBE,
                                   Op.DESCRIBE_CONFIGS, Op.ALTER_CONFIGS}),
    ResourceType.GROUP: frozenset({Op.READ, Op.DESCRIBE, Op.DELETE}),
    ResourceType.CLUSTER: frozenset({Op.CREATE, Op.CLUSTER_ACTION, Op.DESCRIBE_CONFIGS, Op.ALTER_CONFIGS,
                                     Op.IDEMPOTENT_WRITE, Op.ALTER, Op.DESCRIBE}),
    ResourceType.TRANSACTIONAL_ID: frozenset({Op.DESCRIBE, Op.WRITE}),
}
#: An ALLOW of any of these also allows the key (Kafka: READ/WRITE/DELETE/ALTER imply DESCRIBE,
#: ALTER_CONFIGS implies DESCRIBE_CONFIGS). Denials are never implied.
IMPLIED_BY: dict[AclOperation, frozenset[AclOperation]] = {
    Op.DESCRIBE: frozenset({Op.DESCRIBE, Op.READ, Op.WRITE, Op.DELETE, Op.ALTER}),
    Op.DESCRIBE_CONFIGS: frozenset({Op.DESCRIBE_CONFIGS, Op.ALTER_CONFIGS}),
}


@dataclass(frozen=True, slots=True)
class AclBinding:
    """One ACL: who (principal, host) may or may not (permission) do what (operation) to
    which resources (type, name, pattern)."""

    resource_type: ResourceType
    name: str
    pattern_type: PatternType
    principal: str
    host: str
    operation: AclOperation
    permission: Permission

    def validate(self) -> AclBinding:
        """This binding, checked as CreateAcls and ``flowbus acls add`` need it.

        Raises:
            AclError: an unsupported type, pattern, operation or permission, a CLUSTER ACL not
                named ``kafka-cluster``, a principal not ``Type:name``, an empty field.
        """
        if self.resource_type not in SUPPORTED_OPERATIONS:
            raise AclError(f"resource type {_name(self.resource_type)} is not supported "
                           "(TOPIC, GROUP, CLUSTER, TRANSACTIONAL_ID)")
        if self.pattern_type not in (PatternType.LITERAL, PatternType.PREFIXED):
            raise AclError(f"pattern type {_name(self.pattern_type)}: an ACL is LITERAL or PREFIXED")
        if self.operation != Op.ALL and self.operation not in SUPPORTED_OPERATIONS[self.resource_type]:
            raise AclError(f"operation {_name(self.operation)} does not apply to {self.resource_type.name}")
        if self.permission not in (Permission.ALLOW, Permission.DENY):
            raise AclError(f"permission {_name(self.permission)}: an ACL is ALLOW or DENY")
        for label, value in (("resource name", self.name), ("principal", self.principal), ("host", self.host)):
            if not value or len(value) > ACL_FIELD_CHARS_MAX:
                raise AclError(f"the {label} must have 1 to {ACL_FIELD_CHARS_MAX} characters")
        if self.resource_type == ResourceType.CLUSTER and (
            self.name != CLUSTER_NAME or self.pattern_type != PatternType.LITERAL
        ):
            raise AclError(f"the CLUSTER resource is named {CLUSTER_NAME!r} (LITERAL)")
        kind, sep, who = self.principal.partition(":")
        if not sep or not kind or not who:
            raise AclError(f"principal {self.principal!r} is not TYPE:NAME (User:alice)")
        if self.pattern_type == PatternType.PREFIXED and self.name == WILDCARD:
            raise AclError("a PREFIXED pattern of '*' is not allowed; use LITERAL '*'")
        return self

    def to_json(self) -> dict[str, Any]:
        return {"resource_type": self.resource_type.name, "name": self.name,
                "pattern_type": self.pattern_type.name, "principal": self.principal, "host": self.host,
                "operation": self.operation.name, "permission": self.permission.name}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> AclBinding:
        try:
            return cls(ResourceType[entry["resource_type"]], str(entry["name"]),
                       PatternType[entry["pattern_type"]], str(entry["principal"]), str(entry["host"]),
                       AclOperation[entry["operation"]], Permission[entry["permission"]]).validate()
        except (KeyError, TypeError) as exc:
            raise AclError(f"not an ACL entry: {entry!r}") from exc

    def describe(self) -> str:
        """One line, like ``kafka-acls.sh --list``."""
        return (f"{self.resource_type.name}:{self.pattern_type.name}:{self.name}\t{self.principal} "
                f"{self.permission.name} {self.operation.name} from {self.host}")


def _name(code: int) -> str:
    return getattr(code, "name", str(code))


@dataclass(frozen=True, slots=True)
class AclFilter:
    """What DescribeAcls and DeleteAcls match: None (or ANY) fields match everything.

    ``pattern_type`` MATCH selects the bindings that apply to the named resource: its literal
    name, the ``*`` wildcard and every prefix of it (Kafka's ``PatternType.MATCH``).
    """

    resource_type: ResourceType = ResourceType.ANY
    name: str | None = None
    pattern_type: PatternType = PatternType.ANY
    principal: str | None = None
    host: str | None = None
    operation: AclOperation = AclOperation.ANY
    permission: Permission = Permission.ANY

    def validate(self) -> AclFilter:
        """Raises AclError for codes a filter cannot carry (UNKNOWN anywhere)."""
        for value in (self.resource_type, self.pattern_type, self.operation, self.permission):
            if value == 0:
                raise AclError("a filter cannot match UNKNOWN")
        return self

    def matches(self, binding: AclBinding) -> bool:
        if self.resource_type != ResourceType.ANY and binding.resource_type != self.resource_type:
            return False
        if not self._matches_pattern(binding):
            return False
        if self.principal is not None and binding.principal != self.principal:
            return False
        if self.host is not None and binding.host != self.host:
            return False
        if self.operation != Op.ANY and binding.operation != self.operation:
            return False
        return self.permission == Permission.ANY or binding.permission == self.permission

    def _matches_pattern(self, binding: AclBinding) -> bool:
        if self.pattern_type == PatternType.MATCH:
            if self.name is None:
                return True
            if binding.pattern_type == PatternType.PREFIXED:
                return self.name.startswith(binding.name)
            return binding.name in (self.name, WILDCARD)
        if self.pattern_type != PatternType.ANY and binding.pattern_type != self.pattern_type:
            return False
        return self.name is None or binding.name == self.name


@dataclass(frozen=True, slots=True)
class AuthorizerConfig:
    """``flowbus broker --authorizer on --super-users ... --allow-everyone-if-no-acl-found``.

    Args:
        super_users: principals allowed everything (Kafka's ``super.users``).
        allow_everyone_if_no_acl_found: a resource no ACL matches is open to all (Kafka's
            setting of that name; off: deny by default).
    """

    super_users: frozenset[str] = field(default_factory=frozenset)
    allow_everyone_if_no_acl_found: bool = False


def parse_super_users(text: str) -> frozenset[str]:
    """``User:admin;User:ops`` (Kafka's separator; commas are accepted too).

    Raises:
        AclError: an entry that is not ``Type:name``.
    """
    users = [item.strip() for item in text.replace(",", ";").split(";") if item.strip()]
    for user in users:
        kind, sep, who = user.partition(":")
        if not sep or not kind or not who:
            raise AclError(f"super user {user!r} is not TYPE:NAME (User:admin)")
    return frozenset(users)


class AclStore:
    """The set of bindings, indexed by (resource type, pattern type, name), backed by one file.

    Args:
        path: ``<data-dir>/acls.json``; a missing file is an empty store.

    Raises:
        AclError: the file exists but cannot be read or parsed.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._bindings: dict[AclBinding, None] = {}  # insertion-ordered set
        #: (type, name) -> literal bindings; (type) -> {prefix: bindings} of PREFIXED ones.
        self._literal: dict[tuple[ResourceType, str], list[AclBinding]] = {}
        self._prefixed: dict[ResourceType, dict[str, list[AclBinding]]] = {}
        #: Bumped on every change: the authorizer's cache compares it.
        self.generation = 0
        self.reload()

    def reload(self) -> None:
        try:
            with open(self.path, "rb") as file:
                data = file.read(ACLS_FILE_BYTES_MAX + 1)
        except FileNotFoundError:
            self._replace([])
            return
        except OSError as exc:
            raise AclError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        if len(data) > ACLS_FILE_BYTES_MAX:
            raise AclError(f"{self.path} is larger than {ACLS_FILE_BYTES_MAX} bytes")
        try:
            document = json.loads(data)
            if document.get("version") != FORMAT_VERSION:
                raise AclError(f"{self.path}: unknown format version {document.get('version')!r}")
            entries = document["acls"]
            if len(entries) > ACLS_MAX:
                raise AclError(f"{self.path} holds more than {ACLS_MAX} ACLs")
            self._replace([AclBinding.from_json(entry) for entry in entries])
        except AclError as exc:
            raise AclError(f"{self.path}: {exc}") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AclError(f"{self.path} is not a valid ACL file: {exc}") from exc

    def _replace(self, bindings: Iterable[AclBinding]) -> None:
        self._bindings = dict.fromkeys(bindings)
        self._reindex()

    def _reindex(self) -> None:
        literal: dict[tuple[ResourceType, str], list[AclBinding]] = {}
        prefixed: dict[ResourceType, dict[str, list[AclBinding]]] = {}
        for b in self._bindings:
            if b.pattern_type == PatternType.LITERAL:
                literal.setdefault((b.resource_type, b.name), []).append(b)
            else:
                prefixed.setdefault(b.resource_type, {}).setdefault(b.name, []).append(b)
        self._literal, self._prefixed = literal, prefixed
        self.generation += 1

    # -- reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._bindings)

    def bindings(self, flt: AclFilter | None = None) -> list[AclBinding]:
        return [b for b in self._bindings if flt is None or flt.matches(b)]

    def matching(self, resource_type: ResourceType, name: str) -> list[AclBinding]:
        """Every binding that applies to one resource: its literal name, ``*`` (not for the
        internal topics) and the prefixes of its name."""
        found = list(self._literal.get((resource_type, name), ()))
        internal = resource_type == ResourceType.TOPIC and name in INTERNAL_TOPICS
        if not internal and name != WILDCARD:
            found += self._literal.get((resource_type, WILDCARD), ())
        for prefix, bindings in self._prefixed.get(resource_type, {}).items():
            if name.startswith(prefix):
                found += bindings
        return found

    def of_type(self, resource_type: ResourceType) -> list[AclBinding]:
        return [b for b in self._bindings if b.resource_type == resource_type]

    # -- changing (in memory; see save) ----------------------------------------------------

    def add(self, bindings: Iterable[AclBinding]) -> int:
        """Add bindings (each validated); how many were new.

        Raises:
            AclError: an invalid binding, or more than ACLS_MAX in all (nothing is added).
        """
        new = [b.validate() for b in bindings if b not in self._bindings]
        if len(self._bindings) + len(new) > ACLS_MAX:
            raise AclError(f"at most {ACLS_MAX} ACLs")
        self._bindings.update(dict.fromkeys(new))
        if new:
            self._reindex()
        return len(new)

    def remove(self, flt: AclFilter) -> list[AclBinding]:
        """Remove and return the bindings ``flt`` matches."""
        gone = [b for b in self._bindings if flt.matches(b)]
        for b in gone:
            del self._bindings[b]
        if gone:
            self._reindex()
        return gone

    def save(self) -> None:
        """Replace the file atomically with the current set (mode 0600).

        Raises:
            AclError: the file could not be written (the old one is left as it was).
        """
        payload = json.dumps({"version": FORMAT_VERSION, "acls": [b.to_json() for b in self._bindings]},
                             indent=1).encode("utf-8")
        try:
            write_private_file(self.path, payload)
        except OSError as exc:
            raise AclError(f"cannot write {self.path}: {exc.strerror or exc}") from exc


class Authorizer:
    """Decides whether (principal, host) may do an operation on a resource.

    Decisions are cached per (principal, host, resource type, name, operation): a produce or
    fetch then costs one dict lookup per topic. The cache is dropped whenever the store changes
    (its generation moves) and when it reaches DECISION_CACHE_ENTRIES_MAX entries.
    """

    def __init__(self, store: AclStore, config: AuthorizerConfig) -> None:
        self.store = store
        self.config = config
        self._cache: dict[tuple[str, str, ResourceType, str, AclOperation], bool] = {}
        self._cache_generation = store.generation

    def is_super_user(self, principal: str) -> bool:
        return principal in self.config.super_users

    def authorize(self, principal: str, host: str, resource_type: ResourceType, name: str,
                  operation: AclOperation) -> bool:
        """Whether the operation is allowed (see the module docstring for the rules)."""
        if principal in self.config.super_users:
            return True
        if self._cache_generation != self.store.generation or len(self._cache) >= DECISION_CACHE_ENTRIES_MAX:
            self._cache.clear()
            self._cache_generation = self.store.generation
        key = (principal, host, resource_type, name, operation)
        decision = self._cache.get(key)
        if decision is None:
            decision = self._cache[key] = self._decide(principal, host, resource_type, name, operation)
        return decision

    def _decide(self, principal: str, host: str, resource_type: ResourceType, name: str,
                operation: AclOperation) -> bool:
        bindings = self.store.matching(resource_type, name)
        if not bindings:
            internal = resource_type == ResourceType.TOPIC and name in INTERNAL_TOPICS
            return self.config.allow_everyone_if_no_acl_found and not internal
        allowing = IMPLIED_BY.get(operation, frozenset({operation}))
        allowed = False
        for b in bindings:
            if b.principal not in (principal, WILDCARD_PRINCIPAL) or b.host not in (host, WILDCARD):
                continue
            if b.permission == Permission.DENY:
                if b.operation in (operation, Op.ALL):
                    return False  # a matching DENY wins over every ALLOW
            elif b.operation == Op.ALL or b.operation in allowing:
                allowed = True
        return allowed

    def authorize_any_of_type(self, principal: str, host: str, resource_type: ResourceType,
                              operation: AclOperation) -> bool:
        """Whether some ALLOW of ``operation`` on some resource of the type applies to the
        principal (Kafka's ``authorizeByResourceType``, used for idempotent producers: WRITE on
        any topic is enough). A DENY on ``*`` (LITERAL) for the principal refuses."""
        if principal in self.config.super_users:
            return True
        found = False
        for b in self.store.of_type(resource_type):
            if b.principal not in (principal, WILDCARD_PRINCIPAL) or b.host not in (host, WILDCARD):
                continue
            if b.operation not in (operation, Op.ALL):
                continue
            if b.permission == Permission.DENY:
                if b.pattern_type == PatternType.LITERAL and b.name == WILDCARD:
                    return False
            else:
                found = True
        return found or (self.config.allow_everyone_if_no_acl_found and not self.store.of_type(resource_type))

    def authorized_operations(self, principal: str, host: str, resource_type: ResourceType, name: str) -> int:
        """KIP-430's bit set of the operations allowed on one resource."""
        bits = 0
        for operation in SUPPORTED_OPERATIONS[resource_type]:
            if self.authorize(principal, host, resource_type, name, operation):
                bits |= 1 << operation
        return bits
