"""flowbus.broker."""

from __future__ import annotations
