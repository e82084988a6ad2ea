"""State stores, changelogs and windows, installed as ``flowbus.state``."""

from __future__ import annotations
