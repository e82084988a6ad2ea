"""The broker's SCRAM credentials: ``credentials.json`` in the data directory.

Per user and mechanism the file holds the salt, the iteration count, StoredKey and ServerKey
(RFC 5802), base64-encoded; never a password. It is replaced atomically (a temporary file
created with mode 0600, fsynced, renamed over the old one, the directory fsynced), so a crash
leaves either the old or the new set. SASL/PLAIN logins are checked against these entries by
deriving the keys from the password given (:meth:`CredentialStore.check_password`).

Written by the broker (AlterUserScramCredentials) and by ``flowbus users`` on a stopped broker's
data directory; the broker reads it once at start-up.

Layout::

    {"version": 1,
     "users": {"alice": {"SCRAM-SHA-256": {"salt": "...", "iterations": 8192,
                                           "stored_key": "...", "server_key": "..."}}}}
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

from flowbus.broker.security.errors import CredentialError
from flowbus.broker.security.files import write_private_file
from flowbus.broker.security.scram import (
    ITERATIONS_MAX,
    MECHANISMS,
    SCRAM_SHA_256,
    SCRAM_SHA_512,
    ScramCredential,
    ScramMechanism,
    check_iterations,
    check_user_name,
)

#: The file's name in the broker's data directory.
CREDENTIALS_FILE = "credentials.json"
FORMAT_VERSION = 1
#: A credentials file larger than this is refused at load (it is read whole).
CREDENTIALS_FILE_BYTES_MAX = 16 * 1024 * 1024
#: PLAIN prefers the strongest entry a user has.
PLAIN_CHECK_ORDER = (SCRAM_SHA_512, SCRAM_SHA_256)


class CredentialStore:
    """User -> mechanism -> :class:`ScramCredential`, backed by one JSON file.

    Args:
        path: the file (``<data-dir>/credentials.json``); a missing file is an empty store.

    Raises:
        CredentialError: the file exists but cannot be read or parsed.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._users: dict[str, dict[str, ScramCredential]] = {}
        self.reload()

    def reload(self) -> None:
        """Read the file again (missing: empty)."""
        try:
            with open(self.path, "rb") as file:
                data = file.read(CREDENTIALS_FILE_BYTES_MAX + 1)
        except FileNotFoundError:
            self._users = {}
            return
        except OSError as exc:
            raise CredentialError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        if len(data) > CREDENTIALS_FILE_BYTES_MAX:
            raise CredentialError(f"{self.path} is larger than {CREDENTIALS_FILE_BYTES_MAX} bytes")
        self._users = _parse(data, self.path)

    # -- reading ---------------------------------------------------------------------------

    def users(self) -> list[str]:
        return sorted(self._users)

    def get(self, user: str, mechanism: ScramMechanism) -> ScramCredential | None:
        return self._users.get(user, {}).get(mechanism.name)

    def mechanisms_of(self, user: str) -> list[ScramCredential]:
        """The user's credentials, ordered by mechanism code ([] for an unknown user)."""
        return sorted(self._users.get(user, {}).values(), key=lambda c: c.mechanism.code)

    def plain_credential(self, user: str) -> ScramCredential | None:
        """The entry a PLAIN login of ``user`` is checked against (SCRAM-SHA-512 first)."""
        for mechanism in PLAIN_CHECK_ORDER:
            credential = self.get(user, mechanism)
            if credential is not None:
                return credential
        return None

    # -- changing --------------------------------------------------------------------------

    def put(self, user: str, credential: ScramCredential) -> None:
        """Add or replace ``user``'s credential for its mechanism (in memory; see :meth:`save`)."""
        check_user_name(user)
        check_iterations(credential.iterations)
        self._users.setdefault(user, {})[credential.mechanism.name] = credential

    def delete(self, user: str, mechanism: ScramMechanism | None = None) -> bool:
        """Remove one mechanism of ``user`` (all when None); whether anything was removed."""
        entries = self._users.get(user)
        if entries is None:
            return False
        if mechanism is None:
            del self._users[user]
            return True
        removed = entries.pop(mechanism.name, None) is not None
        if not entries:
            del self._users[user]
        return removed

    def save(self) -> None:
        """Replace the file atomically with the current set (mode 0600).

        Raises:
            CredentialError: the file could not be written (the old one is left as it was).
        """
        payload = json.dumps(_serialize(self._users), indent=1, sort_keys=True).encode("utf-8")
        try:
            write_private_file(self.path, payload)
        except OSError as exc:
            raise CredentialError(f"cannot write {self.path}: {exc.strerror or exc}") from exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _serialize(users: dict[str, dict[str, ScramCredential]]) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "users": {
            user: {
                name: {
                    "salt": _b64(c.salt),
                    "iterations": c.iterations,
                    "stored_key": _b64(c.stored_key),
                    "server_key": _b64(c.server_key),
                }
                for name, c in sorted(entries.items())
            }
            for user, entries in sorted(users.items())
        },
    }


def _parse(data: bytes, path: Path) -> dict[str, dict[str, ScramCredential]]:
    try:
        document = json.loads(data)
        if document.get("version") != FORMAT_VERSION:
            raise CredentialError(f"{path}: unknown format version {document.get('version')!r}")
        users: dict[str, dict[str, ScramCredential]] = {}
        for user, entries in document["users"].items():
            check_user_name(user)
            users[user] = {}
            for name, entry in entries.items():
                mechanism = MECHANISMS.get(name)
                if mechanism is None:
                    raise CredentialError(f"{path}: unknown mechanism {name!r} for {user!r}")
                iterations = int(entry["iterations"])
                if iterations > ITERATIONS_MAX:
                    raise CredentialError(f"{path}: {iterations} iterations for {user!r}")
                users[user][name] = ScramCredential(
                    mechanism,
                    base64.b64decode(entry["salt"], validate=True),
                    iterations,
                    base64.b64decode(entry["stored_key"], validate=True),
                    base64.b64decode(entry["server_key"], validate=True),
                )
        return users
    except CredentialError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise CredentialError(f"{path} is not a valid credentials file: {exc}") from exc
