"""``flowbus groups list|describe``: consumer groups, their members and how far behind they are.

``describe`` answers what ``kafka-consumer-groups --describe`` answers: for every partition the
group has committed an offset for or has assigned to a member, the committed offset, the end
offset (high watermark) and the lag between them, with the member reading it.
"""

from __future__ import annotations

import click

from flowbus.cli.common import broker_option, connect, echo_table, run, timeout_option
from flowbus.transports import (
    GroupDescription,
    GroupMember,
    TopicPartition,
    Transport,
    Watermarks,
)
from flowbus.transports.errors import TopicNotFoundError

NONE_SHOWN = "-"
"""Printed where there is no value: no commit yet, no member, a topic deleted since the commit."""


@click.group("groups")
def groups() -> None:
    """List consumer groups; show members, committed offsets and lag."""


@groups.command("list")
@broker_option
@timeout_option
def list_groups(broker_url: str, timeout_s: float) -> None:
    """Print every consumer group with its state (Stable, Empty, PreparingRebalance, ...)."""

    async def main() -> None:
        async with connect(broker_url, timeout_s=timeout_s) as transport:
            found = await transport.list_groups(timeout_s=timeout_s)
        echo_table(["GROUP", "STATE"], [(g.group_id, g.state) for g in found])

    run(main())


async def _end_offsets(
    transport: Transport, partitions: list[TopicPartition], timeout_s: float
) -> dict[TopicPartition, Watermarks]:
    """Watermarks topic by topic, so a topic deleted since the group committed leaves only its
    own rows without an end offset."""
    out: dict[TopicPartition, Watermarks] = {}
    for topic in sorted({tp.topic for tp in partitions}):
        wanted = [tp for tp in partitions if tp.topic == topic]
        try:
            out.update(await transport.watermarks(wanted, timeout_s=timeout_s))
        except TopicNotFoundError:
            continue
    return out


def _print_group(
    description: GroupDescription, committed: dict[TopicPartition, int], ends: dict[TopicPartition, Watermarks]
) -> None:
    owner: dict[TopicPartition, GroupMember] = {}
    for member in description.members:
        for tp in member.assignment:
            owner[tp] = member
    click.echo(f"Group: {description.group_id}  State: {description.state}  Members: {len(description.members)}")
    if description.members:
        click.echo("")
        echo_table(
            ["MEMBER-ID", "CLIENT-ID", "HOST", "PARTITIONS"],
            [
                (m.member_id, m.client_id, m.host,
                 ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(m.assignment)) or NONE_SHOWN)
                for m in description.members
            ],
        )
    rows = []
    for tp in sorted(set(committed) | set(owner)):
        offset = committed.get(tp)
        end = ends[tp].high if tp in ends else None
        lag = max(0, end - offset) if end is not None and offset is not None else None
        reader = owner.get(tp)
        rows.append((
            tp.topic, tp.partition,
            NONE_SHOWN if offset is None else offset,
            NONE_SHOWN if end is None else end,
            NONE_SHOWN if lag is None else lag,
            reader.member_id if reader else NONE_SHOWN,
            reader.client_id if reader else NONE_SHOWN,
        ))
    click.echo("")
    echo_table(["TOPIC", "PARTITION", "COMMITTED-OFFSET", "END-OFFSET", "LAG", "MEMBER-ID", "CLIENT-ID"], rows)


@groups.command("describe")
@click.argument("group")
@broker_option
@timeout_option
def describe_group(group: str, broker_url: str, timeout_s: float) -> None:
    """Print GROUP's state and members and, per partition, its committed offset, the end offset
    and the lag (end minus committed; - where the group has not committed yet)."""

    async def main() -> None:
        async with connect(broker_url, timeout_s=timeout_s) as transport:
            description = await transport.describe_group(group, timeout_s=timeout_s)
            committed = await transport.group_offsets(group, timeout_s=timeout_s)
            if description.state == "Dead" and not description.members and not committed:
                raise click.ClickException(f"unknown group {group!r} (`flowbus groups list` shows them)")
            assigned = [tp for m in description.members for tp in m.assignment]
            ends = await _end_offsets(transport, sorted(set(committed) | set(assigned)), timeout_s)
        _print_group(description, committed, ends)

    run(main())
