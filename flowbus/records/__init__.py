"""flowbus.records."""

from __future__ import annotations
