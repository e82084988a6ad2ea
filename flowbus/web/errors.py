"""Errors of the HTTP server (:mod:`flowbus.web`)."""

from __future__ import annotations

from flowbus.errors import FlowbusError


class WebServerError(FlowbusError):
    """The web server cannot start (a busy port), or a route is added after the start."""
