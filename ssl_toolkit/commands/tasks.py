"""`ssl tasks`."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap

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
    # on a terminal, wrapped to its width under the text column; piped, one line per field (for grep)
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 0
    for r in rows:
        for first, text in ((r["name"], r["description"]), ("", f"paper: {r['paper']}"), ("", f"needs: {r['needs']}")):
            line = f"{first:<18} {text}"
            click.echo(textwrap.fill(line, width, subsequent_indent=" " * 19, break_on_hyphens=False) if width > 40 else line)
