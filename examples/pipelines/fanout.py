"""Fan-out by branch: orders routed to one topic each — large orders, EU orders, everything else.

Each order goes to the first branch whose predicate holds (large wins over EU)::

    flowbus worker -A examples.pipelines.fanout:app --data-dir ./flowbus-data --listen 127.0.0.1:9092
"""

from __future__ import annotations

from dataclasses import dataclass

from flowbus import App

app = App("order-router")

EU = frozenset({"AT", "BE", "DE", "ES", "FI", "FR", "IE", "IT", "NL", "PT"})
LARGE_TOTAL = 1_000.0


@dataclass
class Order:
    id: str
    country: str
    total: float


orders = app.topic("orders", key_type=str, value_type=Order)
large = app.topic("orders-large", key_type=str, value_type=Order)
eu = app.topic("orders-eu", key_type=str, value_type=Order)
other = app.topic("orders-other", key_type=str, value_type=Order)

to_large, to_eu, to_other = app.stream(orders).branch(
    lambda o: o.total >= LARGE_TOTAL,
    lambda o: o.country in EU,
    lambda o: True,
)
to_large.to(large)
to_eu.to(eu)
to_other.to(other)
