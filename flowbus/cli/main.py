"""The ``flowbus`` command line: one click group, one module per command family.

Each command lives in its own module under ``flowbus.cli`` and is registered here, so that
``flowbus --help`` lists everything while a command's heavy imports load only when it runs.
"""

from __future__ import annotations

import click

from flowbus import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flowbus")
def cli() -> None:
    """flowbus: stream processing with a built-in Kafka-protocol broker."""


from flowbus.cli.broker import broker as _broker  # noqa: E402
cli.add_command(_broker)
from flowbus.cli.worker import worker as _worker  # noqa: E402
cli.add_command(_worker)
from flowbus.cli.topics import topics as _topics  # noqa: E402
cli.add_command(_topics)
from flowbus.cli.produce import produce as _produce  # noqa: E402
cli.add_command(_produce)
from flowbus.cli.consume import consume as _consume  # noqa: E402
cli.add_command(_consume)
from flowbus.cli.groups import groups as _groups  # noqa: E402
cli.add_command(_groups)
from flowbus.cli.tables import tables as _tables  # noqa: E402
cli.add_command(_tables)
from flowbus.cli.data import data as _data  # noqa: E402
cli.add_command(_data)
from flowbus.cli.users import users as _users  # noqa: E402
cli.add_command(_users)
from flowbus.cli.acls import acls as _acls  # noqa: E402
cli.add_command(_acls)


def main() -> None:
    """Entry point for ``python -m flowbus``."""
    cli()
