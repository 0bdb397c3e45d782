"""`ssl inspect`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from ssl_toolkit.cli import CONTEXT, FINITE, build_config, main, one_config, quiet_libraries, ranged_option
from ssl_toolkit.completion import complete_data

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar


class StageBar:
    """``progress(stage, done, total)`` drawn as one click progress bar per stage, on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.done = enabled, 0
        self.stage: str | None = None
        self.bar: ProgressBar[int] | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage != self.stage:
            self.close()
            self.stage, self.done = stage, 0
            stderr = click.get_text_stream("stderr")  # type: ignore[operator]  # click 8.5 serves this deprecated name through a module __getattr__ typed object
            label = f"{stage:<20}" if stderr.isatty() else stage  # off a terminal click prints the label alone: no padding
            self.bar = click.progressbar(length=max(total, 1), label=label, file=stderr, show_pos=True)
            self.bar.__enter__()
        step = done - self.done
        if step > 0 and self.bar is not None:
            self.bar.update(step)
            self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


INSPECT = "ssl_toolkit.inspection.config:InspectConfig"


@main.command(context_settings=CONTEXT)
@click.argument("data", shell_complete=complete_data)
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write a self-contained HTML report here.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON (instead of the summary).")
@click.option(
    "--embed", metavar="TARGET", help="Also group images whose embeddings by this backbone (run folder, file or library name) are close."
)
@click.option(
    "--dedupe-list",
    type=click.Path(dir_okay=False),
    help="Write the paths (ids) to drop, keeping one image per duplicate group. Nothing is deleted.",
)
@ranged_option(
    "--near-hamming",
    type=int,
    model=INSPECT,
    key="near_hamming",
    text="Largest difference-hash distance (bits of 64) for near duplicates",
    default="4",
)
@ranged_option(
    "--near-tolerance",
    type=FINITE,
    model=INSPECT,
    key="near_tolerance",
    text="Largest mean absolute thumbnail difference for near duplicates",
    default="0.01",
)
@ranged_option(
    "--embed-threshold",
    type=FINITE,
    model=INSPECT,
    key="embed_threshold",
    text="Smallest cosine similarity for --embed neighbours",
    default="0.95",
)
@ranged_option(
    "--max-imbalance",
    type=FINITE,
    model=INSPECT,
    key="max_imbalance",
    text="Warn when largest class / smallest class exceeds this",
    default="10",
)
@ranged_option(
    "--image-size",
    type=int,
    model=INSPECT,
    key="data.image_size",
    text="Size at which the normalisation statistics are measured",
    default="the dataset's",
)
@ranged_option("--workers", type=int, model=INSPECT, key="workers", text="Threads reading files", default="2 x CPUs, at most 8")
@click.option("--config", "config_file", type=click.Path(), multiple=True, callback=one_config, help="YAML file with inspect settings.")
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override any setting, e.g. --set data.test_fraction=0.3 (repeatable)."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def inspect(
    data,
    out,
    as_json,
    embed,
    dedupe_list,
    near_hamming,
    near_tolerance,
    embed_threshold,
    max_imbalance,
    image_size,
    workers,
    config_file,
    overrides,
    quiet,
) -> None:
    """Inspect a dataset: sizes, modes, formats, statistics, labels, duplicates, leakage, unreadable files.

    DATA is a dataset name (digits, synthetic, fashion-mnist, or one a plugin registers), an
    image folder, or shards written by `ssl shard`. Prints a summary; --json prints
    everything as JSON, --out writes an HTML page with thumbnails.
    """
    quiet_libraries()
    from ssl_toolkit.config import validate
    from ssl_toolkit.inspection import InspectConfig, inspect_data
    from ssl_toolkit.inspection.summary import format_summary

    values = {
        "data.name": data,
        "data.image_size": image_size,
        "near_hamming": near_hamming,
        "near_tolerance": near_tolerance,
        "embed_threshold": embed_threshold,
        "max_imbalance": max_imbalance,
        "workers": workers,
    }
    cfg = validate(InspectConfig, build_config(config_file, values, overrides))
    bar = StageBar(enabled=not quiet)
    try:
        report = inspect_data(cfg, embed=embed, out=out, dedupe_list=dedupe_list, progress=bar)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(report, separators=(",", ":")))
    else:
        click.echo(format_summary(report))
