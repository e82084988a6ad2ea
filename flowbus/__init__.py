"""flowbus: stream processing for Python with a built-in Kafka-protocol broker.

The public API::

    import flowbus

    app = flowbus.App("shop", broker="embedded://./flowbus-data")
    orders = app.topic("orders", value_type=Order)

    @app.agent(orders, sink=[app.topic("big-orders")])
    async def big(stream):
        async for order in stream:
            if order.total > 100:
                yield order

    app.stream(orders).filter(lambda o: o.total > 0).map(to_row).to(app.topic("rows"))
"""

from __future__ import annotations

from flowbus.agent import Agent
from flowbus.app import App
from flowbus.app_errors import (
    AgentError,
    ConfigurationError,
    DecodeError,
    FrameworkError,
    ValidationError,
)
from flowbus.clock import ManualClock
from flowbus.errors import FlowbusError
from flowbus.operators.dataflow import Dataflow
from flowbus.stream import Event, Stream
from flowbus.topic import Topic

__all__ = [
    "Agent",
    "AgentError",
    "App",
    "ConfigurationError",
    "Dataflow",
    "DecodeError",
    "Event",
    "FlowbusError",
    "FrameworkError",
    "ManualClock",
    "Stream",
    "Topic",
    "ValidationError",
    "__version__",
]

__version__ = "0.1.0"
