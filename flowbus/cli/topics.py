"""``flowbus topics list|create|describe|delete``: manage topics on any broker flowbus reaches.

Everything goes through the transport (``Transport.list_topics``, ``create_topics``,
``describe_topics``, ``topic_configs``, ``watermarks``, ``delete_topics``), so the commands work the
same on ``embedded://DIR`` and ``kafka://HOST:PORT``.
"""

from __future__ import annotations

import click

from flowbus.cli.common import (
    broker_option,
    connect,
    echo_table,
    require_topic,
    run,
    timeout_option,
)
from flowbus.transports import TopicPartition, TopicSpec

INTERNAL_TOPIC_PREFIX = "__"
"""Kafka's convention for the broker's own topics (``__consumer_offsets``, ``__transaction_state``)."""


def _parse_configs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """``key=value`` options into a dict; the broker judges whether key and value are valid."""
    configs: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected key=value, got {item!r}")
        configs[key.strip()] = value.strip()
    return configs


@click.group("topics")
def topics() -> None:
    """List, create, describe and delete topics."""


@topics.command("list")
@broker_option
@timeout_option
@click.option("--internal", is_flag=True, help="Also list the broker's own topics (names starting with __).")
def list_topics(broker_url: str, timeout_s: float, internal: bool) -> None:
    """Print topic names, one per line, sorted."""

    async def main() -> list[str]:
        async with connect(broker_url, timeout_s=timeout_s) as transport:
            return await transport.list_topics(timeout_s=timeout_s)

    for name in run(main()):
        if internal or not name.startswith(INTERNAL_TOPIC_PREFIX):
            click.echo(name)


@topics.command("create")
@click.argument("name")
@click.option("--partitions", "-p", type=click.IntRange(1), default=1, show_default=True, help="Number of partitions.")
@click.option(
    "--config", "-c", "configs", multiple=True, metavar="KEY=VALUE", callback=_parse_configs,
    help="A topic config such as retention.ms=86400000 or cleanup.policy=compact; repeat for more.",
)
@broker_option
@timeout_option
def create_topic(name: str, partitions: int, configs: dict[str, str], broker_url: str, timeout_s: float) -> None:
    """Create topic NAME; fails if it exists or the broker rejects a config."""
    from flowbus.log.catalog import validate_topic_name
    from flowbus.log.errors import InvalidTopicError

    try:
        validate_topic_name(name)  # Kafka's rule, so the message says which part is broken
    except InvalidTopicError as exc:
        raise click.ClickException(str(exc)) from exc

    async def main() -> None:
        async with connect(broker_url, timeout_s=timeout_s, create=True) as transport:
            if name in await transport.describe_topics([name]):
                raise click.ClickException(f"topic {name!r} already exists")
            await transport.create_topics([TopicSpec(name, partitions, config=configs)])

    run(main())
    click.echo(f"created topic {name} with {partitions} partition{'s' if partitions != 1 else ''}", err=True)


@topics.command("describe")
@click.argument("name")
@broker_option
@timeout_option
def describe_topic(name: str, broker_url: str, timeout_s: float) -> None:
    """Print NAME's configs that differ from the defaults and, per partition, its log start
    offset (the first offset still stored) and end offset (the next offset to be written)."""

    async def main() -> None:
        async with connect(broker_url, timeout_s=timeout_s) as transport:
            description = await require_topic(transport, name)
            configs = await transport.topic_configs(name, timeout_s=timeout_s)
            partitions = [TopicPartition(name, p) for p in range(description.partitions)]
            marks = await transport.watermarks(partitions, timeout_s=timeout_s)
        click.echo(f"Topic: {name}  Partitions: {description.partitions}")
        settings = ", ".join(f"{k}={v}" for k, v in sorted(configs.items()))
        click.echo(f"Configs: {settings or '(all defaults)'}")
        echo_table(
            ["PARTITION", "LOG-START-OFFSET", "LOG-END-OFFSET"],
            [(tp.partition, marks[tp].low, marks[tp].high) for tp in partitions],
        )

    run(main())


@topics.command("delete")
@click.argument("name")
@broker_option
@timeout_option
def delete_topic(name: str, broker_url: str, timeout_s: float) -> None:
    """Delete topic NAME and all its records (there is no confirmation prompt)."""

    async def main() -> None:
        async with connect(broker_url, timeout_s=timeout_s) as transport:
            await require_topic(transport, name)
            await transport.delete_topics([name], timeout_s=timeout_s)

    run(main())
    click.echo(f"deleted topic {name}", err=True)
