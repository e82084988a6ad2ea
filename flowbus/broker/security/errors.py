"""Errors of the broker's security settings and credential store."""

from __future__ import annotations

from flowbus.broker.errors import BrokerConfigError


class SecurityConfigError(BrokerConfigError):
    """A listener, TLS or SASL setting that cannot work (bad spec, missing file)."""


class CredentialError(SecurityConfigError):
    """A credential that cannot be stored: unknown mechanism, iterations out of range, bad name."""
