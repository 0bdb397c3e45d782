"""`ssl embed`."""

from __future__ import annotations

import json

import click

from ssl_toolkit.cli import CONTEXT, DATA_SETTINGS, POSITIVE, data_argument, echo_rows, main, quiet_libraries
from ssl_toolkit.completion import complete_data, complete_target


@main.command(context_settings=CONTEXT)
@click.argument("target", shell_complete=complete_target)
@click.option(
    "--data", "-d", shell_complete=complete_data, help="Dataset name or image folder. [default: the dataset the backbone was pretrained on]"
)
@click.option(
    "--out",
    "-o",
    default="embeddings.npz",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Output file: .npz (one file) or .npy (memory-mappable embeddings; labels, ids and metadata in NAME.meta.npz beside it).",
)
@click.option("--split", type=click.Choice(["all", "train", "test"]), default="all", show_default=True, help="Which split(s) to embed.")
@click.option("--batch-size", type=POSITIVE, default=256, show_default=True, help="Images per forward pass.")
@click.option("--device", help="Where to run the backbone, e.g. cpu or cuda. [default: cuda when available]")
@DATA_SETTINGS
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object on stdout (the table goes to stderr).")
def embed(target, data, out, split, batch_size, device, overrides, as_json) -> None:
    """Write the embeddings of a dataset under a backbone.

    TARGET is a run folder, a backbone file or a checkpoint-library name. The file holds
    float32 embeddings, labels (when the data has them), image ids and split/row indices.
    Features come from (and go to) the feature cache shared with `ssl probe`.
    """
    quiet_libraries()
    from ssl_toolkit.eval.embed import embed as run_embed

    result = run_embed(target, data_argument(data, overrides), out, split=split, batch_size=batch_size, device=device)
    rows = [
        ("data", result["dataset"]),
        ("rows", ", ".join(f"{k} {v}" for k, v in result["splits"].items())),
        ("dim", str(result["dim"])),
        ("labels", "yes" if result["labelled"] else "no"),
        ("from cache", ", ".join(result["cached"]) or "-"),
        ("seconds", f"{result['seconds']:.1f}"),
    ]
    echo_rows(rows, err=as_json)
    click.echo(f"embeddings: {result['path']}", err=as_json)
    if as_json:
        click.echo(json.dumps(result, separators=(",", ":")))
