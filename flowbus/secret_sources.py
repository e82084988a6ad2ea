"""Where a secret comes from when it is not written where it is used.

A setting that holds a secret (``sasl.password``, ``ssl.key.password``...) also has two forms
that only say where the secret is: ``NAME.file=PATH`` (the first line of PATH) and
``NAME.env=VARNAME`` (an environment variable). Client URLs (``flowbus.transports.kafka``) and
listener URLs (``flowbus.broker.security.settings``) share them, so a command line never has to
carry a secret: every user of the machine reads argv with ``ps`` (issue 14, item 4).
"""

from __future__ import annotations

import os

#: The suffixes of a secret setting's indirect forms: ``sasl.password.file``, ``sasl.password.env``.
SECRET_SOURCES = ("file", "env")
#: A secret file is read up to this many characters (its first line is the secret).
SECRET_FILE_CHARS_MAX = 4096


class SecretSourceError(ValueError):
    """A secret file that cannot be read or a variable that is not set; the message names the
    setting (``sasl.password.env=APP_PASSWORD: ...``) and never holds the secret."""


def read_secret(name: str, source: str, where: str) -> str:
    """The secret of setting ``name`` from a file's first line (``source`` ``"file"``, ``where``
    its path) or an environment variable (``"env"``, ``where`` its name).

    A set but empty variable is an empty secret, not a missing one: the login that uses it
    then fails with the server's own answer.

    Raises:
        SecretSourceError: the file cannot be read, or the variable is not set.
    """
    if source == "env":
        value = os.environ.get(where)
        if value is None:
            raise SecretSourceError(f"{name}.env={where}: the environment variable {where} is not set")
        return value
    try:
        with open(where, encoding="utf-8") as file:
            return file.read(SECRET_FILE_CHARS_MAX).partition("\n")[0].rstrip("\r")
    except OSError as exc:
        raise SecretSourceError(f"{name}.file={where}: cannot read the file: {exc.strerror or exc}") from exc
