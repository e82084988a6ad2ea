"""flowbus.transports."""

from __future__ import annotations
