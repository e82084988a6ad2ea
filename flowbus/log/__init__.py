"""flowbus.log."""

from __future__ import annotations
