"""The root of every error flowbus raises on purpose.

Each subpackage defines its own small error classes in its ``errors.py``, all under
:class:`FlowbusError`, so that an application can catch everything flowbus means to raise
with one ``except`` while programming errors (``TypeError``, ``AssertionError``) still escape.
"""

from __future__ import annotations


class FlowbusError(Exception):
    """Base class of all errors raised deliberately by flowbus."""
