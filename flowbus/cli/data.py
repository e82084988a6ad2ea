"""``flowbus data``: check and repair a broker's data directory on disk (see docs/cli.md)."""

from __future__ import annotations

from pathlib import Path

import click

DATA_DIR = click.argument("data_dir", metavar="DIR", type=click.Path(file_okay=False, exists=True, path_type=Path))


@click.group("data")
def data() -> None:
    """Check or repair a data directory's segment files (no broker needed)."""


@data.command("check")
@DATA_DIR
def check(data_dir: Path) -> None:
    """Report every damaged range of every partition; exit status 1 if there is any.

    DIR is a data directory (flowbus broker --data-dir, or a worker's embedded broker) or one
    partition directory in it. Nothing is changed, so this may run while a broker has DIR open.
    """
    from flowbus.log.errors import LogError
    from flowbus.log.repair import check_data_dir, is_locked

    try:
        partitions = check_data_dir(data_dir)
    except LogError as exc:
        raise click.ClickException(str(exc)) from exc
    if is_locked(data_dir):
        click.echo(f"note: a broker or worker has {data_dir} open; the newest bytes may still be being written", err=True)
    damaged_partitions = 0
    ranges = 0
    for partition in partitions:
        for file_check, damaged in partition.damaged:
            click.echo(f"{partition.name}: {damaged.describe(file_check.path.name)}")
        ranges += len(partition.damaged)
        damaged_partitions += bool(partition.damaged)
    segments = sum(len(p.files) for p in partitions)
    size = sum(p.size_bytes for p in partitions)
    summary = f"checked {_count(len(partitions), 'partition')}, {_count(segments, 'segment')}, {size} bytes: "
    if not ranges:
        click.echo(summary + "no damage")
        return
    click.echo(
        summary + f"{_count(ranges, 'damaged range')} in {_count(damaged_partitions, 'partition')}; "
        "`flowbus data repair` cuts them out"
    )
    raise SystemExit(1)


@data.command("repair")
@DATA_DIR
def repair(data_dir: Path) -> None:
    """Cut every damaged range out of DIR's partitions, keeping all intact data.

    Prints each range cut (partition, file, bytes, offsets). Refuses while a broker or worker
    has DIR open. The offsets a cut range held are gone for good: consumers read on past them.
    """
    from flowbus.log.errors import LogError
    from flowbus.log.repair import repair_data_dir

    try:
        cuts = repair_data_dir(data_dir)
    except LogError as exc:
        raise click.ClickException(str(exc)) from exc
    for cut in cuts:
        damaged = cut.damaged
        click.echo(
            f"{cut.partition}: cut {cut.path.name} bytes {damaged.position}..{damaged.end_position} "
            f"({damaged.size_bytes} bytes), offsets {damaged.describe_offsets()} ({damaged.reason})"
        )
    if cuts:
        partitions = len({c.partition for c in cuts})
        size = sum(c.damaged.size_bytes for c in cuts)
        click.echo(f"repaired {_count(partitions, 'partition')}: cut {_count(len(cuts), 'range')}, {size} bytes")
    else:
        click.echo("no damage: nothing to repair")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
