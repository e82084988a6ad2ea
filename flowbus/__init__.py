"""flowbus: stream processing for Python with a built-in Kafka-protocol broker."""

from __future__ import annotations

from flowbus.errors import FlowbusError

__all__ = ["FlowbusError", "__version__"]

__version__ = "0.1.0"
