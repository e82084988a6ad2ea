"""Prometheus metrics of the broker and the worker (see ``docs/operations.md``).

The hot paths count in plain Python — ints, dicts and :class:`~flowbus.metrics.histogram.LatencyHistogram`
bucket lists, updated per request, per batch or per run of records — and never call
``prometheus_client``. The collectors (:mod:`flowbus.metrics.broker_collector`,
:mod:`flowbus.metrics.worker_collector`) read those counters, and the state that is cheaper to
read than to keep up to date (partition offsets, group lag, transactions, restore progress),
when ``/metrics`` is scraped. Only they import ``prometheus_client``, and only they are imported
when metrics are served: a broker or worker without ``--metrics``/``--web`` never loads it.
"""

from __future__ import annotations
