"""Allows ``python -m flowbus`` as a synonym of the ``flowbus`` command."""

from __future__ import annotations

from flowbus.cli.main import main

main()
