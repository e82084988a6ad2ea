"""Stream transforms and windowed aggregation, installed as ``flowbus.operators``."""

from __future__ import annotations
