"""Windows and a join: each customer's revenue per minute, with the customer's name and tier.

Orders are re-keyed by customer, summed per one-minute window of their event time (the order's
record timestamp; two seconds of grace for late orders), and each window's final total is joined
with the customer's latest profile, a table made from the ``customers`` topic. A quiet minute
still closes: two seconds after the last order the watermark follows the wall clock, so the last
window's total comes out without any further order. Exactly-once: a total is emitted once even
if the worker dies while closing windows::

    flowbus worker -A examples.pipelines.revenue:app --data-dir ./flowbus-data --listen 127.0.0.1:9092
    echo 'c1:{"name": "Ada", "tier": "gold"}' | kcat -P -b 127.0.0.1:9092 -t customers -K:
    echo 'x:{"customer": "c1", "amount": 12.5}' | kcat -P -b 127.0.0.1:9092 -t orders -K:
    kcat -C -b 127.0.0.1:9092 -t revenue-per-minute -X isolation.level=read_committed
"""

from __future__ import annotations

from typing import Any

from flowbus import App

app = App("revenue", processing_guarantee="exactly_once", window_idle_ms=2_000)

orders = app.topic("orders")  # {"customer": "c1", "amount": 12.5}
customers = app.topic("customers", key_type=str)  # keyed by customer id: {"name": ..., "tier": ...}
revenue = app.topic("revenue-per-minute", key_type=str)

profiles = app.stream(customers).to_table("customer-profiles")


def with_profile(total: dict[str, Any], profile: dict[str, Any] | None) -> dict[str, Any]:
    """A window's total and who made it (``None`` fields for a customer without a profile yet)."""
    return {
        "start": total["start"],
        "end": total["end"],
        "revenue": round(total["value"], 2),
        "name": profile["name"] if profile else None,
        "tier": profile["tier"] if profile else None,
    }


(
    app.stream(orders)
    .group_by(lambda order: order["customer"], name="by-customer", key_type=str)
    .tumbling_window(60_000, grace_ms=2_000, name="revenue-1m")
    .sum("amount")
    .final()
    .join(profiles, how="left", joiner=with_profile)
    .to(revenue)
)
