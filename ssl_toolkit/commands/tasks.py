"""`ssl tasks`."""

from __future__ import annotations

import json

import click

from ssl_toolkit.cli import CONTEXT, main


@main.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tasks(as_json) -> None:
    """List every registered pretext task with its paper and input needs."""
    from ssl_toolkit import list_tasks

    rows = list_tasks()
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['name']:<18} {r['description']}")
        click.echo(f"{'':<18} paper: {r['paper']}")
        click.echo(f"{'':<18} needs: {r['needs']}")
