"""`ssl tasks`."""

from __future__ import annotations

import json

import click

from ssl_toolkit.cli import CONTEXT, main


@main.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tasks(as_json) -> None:
    """List every registered pretext task with its paper and input needs."""
    from pydantic import ValidationError

    from ssl_toolkit.pretext import TASKS

    rows = []
    for name in TASKS.names():
        cls = TASKS.get(name)
        needs = []
        if cls.info.needs_colour:
            needs.append("colour")
        try:
            default = cls.Config()
        except ValidationError as e:  # a plugin task whose settings have no defaults
            needs.append("settings " + ", ".join(".".join(map(str, err["loc"])) for err in e.errors()))
            need = 0
        else:
            need = cls.size_requirement(default)[0]
        if need:
            smallest = cls.smallest_image_size(default)
            fallback = f" ({smallest} px with a smaller {' and '.join(cls.geometry_fallbacks)})" if smallest and smallest < need else ""
            needs.append(f">= {need} px{fallback}")
        rows.append({"name": name, "description": cls.info.description, "paper": cls.info.paper, "needs": ", ".join(needs) or "any images"})
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['name']:<18} {r['description']}")
        click.echo(f"{'':<18} paper: {r['paper']}")
        click.echo(f"{'':<18} needs: {r['needs']}")
