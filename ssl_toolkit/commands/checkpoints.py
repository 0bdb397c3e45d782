"""`ssl checkpoints`: list, show, export, import and remove entries of the checkpoint library."""

from __future__ import annotations

import json

import click
import yaml

from ssl_toolkit.cli import CONTEXT, main, quiet_libraries
from ssl_toolkit.completion import complete_library_name, complete_task
from ssl_toolkit.terminal import display_width, pad, terminal_safe
from ssl_toolkit.units import human_size


@main.group(context_settings=CONTEXT)
def checkpoints() -> None:
    """The checkpoint library in $SSL_TOOLKIT_HOME/checkpoints (default ~/.cache/ssl-toolkit).

    \b
    Every finished `ssl pretrain` adds its backbone here; `ssl probe NAME`,
    `ssl pretrain --init-from NAME` and the Python `ssl_toolkit.load_backbone(NAME)`
    accept its names.
    """


def _what_there_is(task: str | None, backbone: str | None) -> str:
    """For an empty filtered list: the tasks and backbones the library does hold.

    No did-you-mean: a filter that names no task or timm model was refused before this, so
    the name asked for is a real one the library just does not hold.
    """
    from ssl_toolkit.library import list_checkpoints

    rows = [r for r in list_checkpoints() if not r.get("error")]
    parts = []
    for asked, key, what in ((task, "task", "tasks"), (backbone, "backbone", "backbones")):
        held = sorted({str(r[key]) for r in rows if r.get(key)})
        if asked is not None and held and asked not in held:
            parts.append(f"{what} in it: {', '.join(held)}")
    return f" ({'; '.join(parts)})" if parts else ""


def _best_cell(row: dict) -> str:
    """``top-1 94.71% (digits-linear-1)``, ``mAP 0.8123 (...)``; ``-`` before any probe."""
    from ssl_toolkit.eval.target_rows import metric_text

    metric, score = row.get("headline_metric"), row.get("headline_score")
    if metric is None or score is None:
        return "-"
    return f"{metric_text(metric, score)} ({row['headline_probe']})"


@checkpoints.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list.")
@click.option("--task", help="Only backbones pretrained with this pretext task.", shell_complete=complete_task)
@click.option("--backbone", help="Only this timm architecture.")
def list_cmd(as_json, task, backbone) -> None:
    """List the library: name, task, backbone, dataset, epochs, best probe, size, date.

    \b
    BEST PROBE is the best recorded `ssl probe` result by its kind's own metric:
    top-1 for classes, ROC-AUC for two-class and mAP for multi-label folders.
    """
    from ssl_toolkit.library import library_root, list_checkpoints

    rows = list_checkpoints(task=task, backbone=backbone)
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo(
            f"no checkpoints in {library_root()}"
            + (
                " matching the filters" + _what_there_is(task, backbone)
                if task or backbone
                else "; `ssl pretrain` adds one when it finishes"
            )
        )
        return
    header = ("NAME", "TASK", "BACKBONE", "DATASET", "EPOCHS", "BEST PROBE", "SIZE", "CREATED")
    table = [header]
    for r in rows:
        if r.get("error"):
            table.append((r["name"], "?", "?", "?", "?", r["error"], "-", "-"))
            continue
        best = _best_cell(r)
        created = (r["created"] or "-")[:16].replace("T", " ")
        table.append(
            (
                r["name"],
                str(r["task"]),
                str(r["backbone"]),
                str(r["dataset"]),
                str(r["epochs"]) + (f" ({r['steps']} steps)" if r["epochs"] == 0 and r.get("steps") else ""),  # cut inside its first epoch
                best,
                human_size(r["size_bytes"]) + (f" DAMAGED ({r['damaged']})" if r.get("damaged") else ""),
                created,
            )
        )
    shown = [[terminal_safe(cell) for cell in row] for row in table]  # names and metadata may hold control or undecodable characters
    widths = [max(display_width(row[i]) for row in shown) for i in range(len(header))]
    for row in shown:
        click.echo("  ".join(pad(cell, w) for cell, w in zip(row, widths)).rstrip())


@checkpoints.command(context_settings=CONTEXT)
@click.argument("name", shell_complete=complete_library_name)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: meta.json with `intact` and `path` added.")
def show(name, as_json) -> None:
    """Show the full metadata of checkpoint NAME and whether its weights are intact."""
    from ssl_toolkit import show_checkpoint
    from ssl_toolkit.backbone_files import WEIGHTS
    from ssl_toolkit.library import entry_dir, entry_meta, verify_entry

    if as_json:
        click.echo(json.dumps(show_checkpoint(name), indent=2))
        return
    meta = entry_meta(name)
    ok = verify_entry(name)
    folder = entry_dir(name)
    state = "intact (SHA-256 matches)" if ok else "CORRUPT (hash mismatch)"
    if not ok and not (folder / WEIGHTS).is_file():
        state = "MISSING (no weights file)"
    elif not ok and not meta.get("weights_sha256"):
        state = "CORRUPT (meta.json records no weights_sha256: the library writes one for every entry; loads refuse it)"
    click.echo(f"# {name}  ({folder})")
    click.echo(f"# weights: {state}")
    click.echo(yaml.safe_dump(meta, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True).rstrip())


@checkpoints.command("export", context_settings=CONTEXT)
@click.argument("name", shell_complete=complete_library_name)
@click.option("--out", "-o", required=True, type=click.Path(), help="File to write, e.g. backbone.safetensors or backbone.pt.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["safetensors", "timm", "torch", "onnx"]),
    default="safetensors",
    show_default=True,
    help="safetensors: the weights as trained; timm: loadable by timm.create_model(pretrained=True); torch: a state_dict for "
    "torch.load(weights_only=True); onnx: a graph with a dynamic batch for onnxruntime (extra: ssl-toolkit[onnx]).",
)
@click.option("--overwrite", is_flag=True, help="Replace --out (and its .json metadata) when they exist.")
def export_cmd(name, out, fmt, overwrite) -> None:
    """Export checkpoint NAME (or a run folder / file) to --out and print the code that loads it.

    Metadata goes next to it as <out>.json (e.g. backbone.pt.json), so `ssl probe OUT` and `ssl checkpoints import OUT`
    work on the exported file too.
    """
    quiet_libraries()
    from ssl_toolkit.checkpoints import sidecar_path
    from ssl_toolkit.export import export_checkpoint

    meta, snippet = export_checkpoint(name, out, fmt, overwrite=overwrite)
    click.echo(
        f"exported {name} as {fmt} to {out} ({human_size(meta['weights_bytes'])}, sha256 {meta['weights_sha256'][:12]}), metadata in {sidecar_path(out)}"
    )
    click.echo("load it in plain Python (no ssl-toolkit needed):\n")  # onnx: onnxruntime only
    click.echo(snippet)


@checkpoints.command("import", context_settings=CONTEXT)
@click.argument("path", type=click.Path())
@click.option("--name", help="Library name. [default: <task>-<backbone>-<dataset>-<date>]")
def import_cmd(path, name) -> None:
    """Add a run folder, backbone folder or exported weights file (with its metadata) to the library."""
    quiet_libraries()
    from ssl_toolkit.library import import_checkpoint

    entry = import_checkpoint(path, name)
    click.echo(f"imported {path} as {entry['name']} ({entry['library_path']})")


@checkpoints.command(context_settings=CONTEXT)
@click.argument("name", shell_complete=complete_library_name)
def remove(name) -> None:
    """Delete checkpoint NAME from the library (its run folder, if any, is kept)."""
    from ssl_toolkit.library import remove_checkpoint

    folder = remove_checkpoint(name)
    click.echo(f"removed {name} ({folder})")
