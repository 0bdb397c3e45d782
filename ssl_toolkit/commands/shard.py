"""`ssl shard`."""

from __future__ import annotations

import json

import click

from ssl_toolkit.cli import CONTEXT, POSITIVE, echo_rows, main, quiet_libraries

# the data settings that decide what is written: which files, their split and labels
SHARD_SETTINGS = ("test_fraction", "split_seed", "labels", "strict", "max_pixels")


@main.command(context_settings=CONTEXT)
@click.argument("folder")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Shard folder to write (must be new or empty).")
@click.option(
    "--image-size",
    type=click.IntRange(8, 1024),
    default=224,
    show_default=True,
    help="Default training size recorded with the shards (files keep their original pixels).",
)
@click.option("--chunk-bytes", default="64MB", show_default=True, help="Target size of one chunk file.")
@click.option("--workers", type=POSITIVE, default=None, help="Writer processes. [default: the CPU count]")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="How files are split and labelled: data.test_fraction, split_seed, labels, strict or max_pixels.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object on the last line.")
def shard(folder, out, image_size, chunk_bytes, workers, overrides, as_json) -> None:
    """Write an image FOLDER as shards in Lightning's litdata streaming format.

    The shards keep every file's original bytes, its label and its split. Use them with
    `--data OUT` in every command (or an object-store URL litdata reads, such as
    s3://bucket/OUT): under DDP each rank reads its own part, and `ssl pretrain --resume`
    continues mid-epoch. Files that cannot be decoded are left out and listed in OUT/skipped.txt.
    """
    quiet_libraries()
    import re
    from pathlib import Path

    from ssl_toolkit.config import DataConfig, apply_overrides, validate
    from ssl_toolkit.data.shards import write_shards
    from ssl_toolkit.devices import CPU_PROCESSES_PER_CORE, usable_cores
    from ssl_toolkit.errors import UserError
    from ssl_toolkit.outputs import check_writable_dir

    if not Path(folder).is_dir():
        raise UserError(f"data path is not a folder: {folder}")
    size = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?b|[kmgt])\s*", chunk_bytes, re.IGNORECASE)
    if size is None or float(size[1]) * 1000 ** "bkmgt".index(size[2][0].lower()) < 1:  # litdata's units: kb = 1000 bytes
        raise UserError(f"--chunk-bytes {chunk_bytes!r}: give a positive size with its unit (1 byte or more), such as 64MB or 500kb")
    data = apply_overrides({}, overrides).get("data")
    cfg = validate(DataConfig, {**(data if isinstance(data, dict) else {}), "name": folder}, what="--set")
    keys = [item.split("=", 1)[0].strip() for item in overrides]
    unused = [k for k in keys if not k.startswith("data.") or k.removeprefix("data.") not in SHARD_SETTINGS]
    if unused:
        raise UserError(
            f"--set {unused[0]}: ssl shard does not use it; the shards take {', '.join('data.' + k for k in SHARD_SETTINGS)} "
            "and --image-size (other data settings are given when training from the shards)"
        )
    cores = usable_cores()
    if workers is not None and workers > CPU_PROCESSES_PER_CORE * cores:
        raise UserError(
            f"--workers {workers}: at most {CPU_PROCESSES_PER_CORE * cores} writer processes on {cores} cores ({CPU_PROCESSES_PER_CORE} per core)"
        )
    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise UserError(f"--out {out} already holds files; choose a new folder")
    check_writable_dir(target, "--out")
    result = write_shards(folder, target, image_size, chunk_bytes, workers or cores, cfg)
    echo_rows(
        [
            ("source", result["source"]),
            ("images", f"train {result['n_train']}, test {result['n_test']}"),
            ("classes", ", ".join(result["classes"]) if result["classes"] else "-"),
            ("skipped", str(result["skipped"])),
        ]
    )
    click.echo(f"shards: {result['out']}")
    if as_json:
        click.echo(json.dumps(result, separators=(",", ":")))
