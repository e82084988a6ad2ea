"""Listeners, TLS and SASL authentication of the broker (issue 14; ``docs/security.md``).

``scram`` is the SCRAM arithmetic (RFC 5802 / 7677) with no I/O, ``credentials`` the on-disk
store of SCRAM credentials, ``sasl`` the per-connection authentication state machine, and
``listeners`` the ``PROTOCOL://HOST:PORT`` listener specs and their TLS contexts, ``acls`` the ACL
model, its ``acls.json`` store and the authorizer (``flowbus/broker/authz.py`` applies it per API).
"""
