"""`ssl shard`."""

from __future__ import annotations

import json

import click

from ssl_toolkit.cli import CONTEXT, POSITIVE, echo_rows, main, quiet_libraries


@main.command(context_settings=CONTEXT)
@click.argument("folder", type=click.Path())
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Shard folder to write (must be new or empty).")
@click.option(
    "--image-size",
    type=click.IntRange(8, 1024),
    default=224,
    show_default=True,
    help="Default training size recorded with the shards (files keep their original pixels).",
)
@click.option("--chunk-bytes", default="64MB", show_default=True, help="Target size of one chunk file.")
@click.option("--workers", type=POSITIVE, default=None, help="Writer processes, at most 4 per core. [default: the CPU count]")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="How files are split and labelled: data.test_fraction, split_seed, split_draw, labels, strict or max_pixels.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object on stdout (the table goes to stderr).")
def shard(folder, out, image_size, chunk_bytes, workers, overrides, as_json) -> None:
    """Write an image FOLDER as shards in Lightning's litdata streaming format.

    The shards keep every file's original bytes, its label and its split. Use them with
    `--data OUT` in every command (or an object-store URL litdata reads, such as
    s3://bucket/OUT): under DDP each rank reads its own part, and `ssl pretrain --resume`
    continues mid-epoch. Files that cannot be decoded are left out and listed in OUT/skipped.txt.
    """
    quiet_libraries()
    from ssl_toolkit.config import apply_overrides
    from ssl_toolkit.data.sharding import shard as write_shards
    from ssl_toolkit.data.sharding import unused_setting

    outside = [key for item in overrides if not (key := item.split("=", 1)[0].strip()).startswith("data.")]
    if outside:
        raise unused_setting(outside[0])
    result = write_shards(folder, out, image_size, chunk_bytes, workers, apply_overrides({}, overrides).get("data"))
    echo_rows(
        [
            ("source", result["source"]),
            ("images", f"train {result['n_train']}, test {result['n_test']}"),
            ("classes", ", ".join(result["classes"]) if result["classes"] else "-"),
            ("skipped", str(result["skipped"])),
        ],
        err=as_json,
    )
    click.echo(f"shards: {result['out']}", err=as_json)
    if as_json:
        click.echo(json.dumps(result, separators=(",", ":")))
