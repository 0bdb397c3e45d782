"""The ``ssl`` command line: thin commands that parse, build a config, call the API and print.

User errors (:class:`~ssl_toolkit.errors.UserError`) print one line on stderr and exit 2.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from ssl_toolkit import __version__
from ssl_toolkit.errors import UserError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _build(config_file: str | None, cli_values: dict[str, Any], overrides: tuple[str, ...]) -> dict[str, Any]:
    """Merge a YAML config, explicit CLI options (dotted keys) and ``--set`` overrides, in that order."""
    from ssl_toolkit.config import apply_overrides, load_yaml, set_dotted

    data = load_yaml(config_file) if config_file else {}
    for key, value in cli_values.items():
        if value is not None:
            set_dotted(data, key, value)
    return apply_overrides(data, overrides)


def _quiet_libraries() -> None:
    """Keep third-party chatter (tips, banners) out of the user's terminal."""
    import logging
    import warnings

    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="ssl-toolkit")
def main() -> None:
    """ssl-toolkit: self-supervised pretraining of timm backbones, evaluation and analysis.

    \b
    Typical flow:
      ssl pretrain --task rotation --data digits --epochs 2 --out runs/rot
      ssl probe runs/rot --data digits
    """


# --------------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@click.option("--task", "-t", help="Pretext task (see `ssl tasks`). [default: rotation]")
@click.option("--data", "-d", help="Dataset name (digits, synthetic, fashion-mnist) or image folder. [default: digits]")
@click.option("--backbone", "-b", help="timm model name. [default: resnet18]")
@click.option("--image-size", type=int, help="Square image side in pixels. [default: the dataset's]")
@click.option("--epochs", type=int, help="Training epochs. [default: 10]")
@click.option("--batch-size", type=int, help="Images per batch (per device). [default: 256]")
@click.option("--lr", type=float, help="Peak learning rate. [default: the task's]")
@click.option("--seed", type=int, help="Random seed. [default: 0]")
@click.option("--config", "config_file", type=click.Path(), help="YAML config file (see configs/pretrain/).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override any config key, e.g. --set trainer.warmup_epochs=1 (repeatable).")
@click.option("--out", "-o", type=click.Path(), help="Run folder. [default: runs/<task>-<backbone>-<data>-<time>]")
@click.option("--overwrite", is_flag=True, help="Replace the run files already in --out.")
@click.option("--resume", type=click.Path(), help="Continue the run in this folder from its last checkpoint.")
@click.option("--accelerator", help="cpu, gpu, auto, ... (Lightning). [default: auto]")
@click.option("--devices", help="Devices per node, e.g. 1, 2 or auto. [default: 1]")
@click.option("--num-nodes", type=int, help="Nodes for multi-node DDP. [default: 1]")
@click.option("--strategy", help="Lightning strategy, e.g. ddp. [default: auto]")
@click.option("--precision", help="32-true, bf16-mixed, 16-mixed. [default: 32-true]")
@click.option("--no-online-probe", is_flag=True, default=None, help="Do not train the online linear probe on labelled data.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def pretrain(task, data, backbone, image_size, epochs, batch_size, lr, seed, config_file, overrides, out, overwrite, resume,
             accelerator, devices, num_nodes, strategy, precision, no_online_probe, quiet) -> None:
    """Pretrain a backbone with a pretext task and write a run folder.

    The run folder gets config.yaml (resolved), metrics.csv, last.ckpt, and the backbone as
    backbone.safetensors + meta.json.
    """
    _quiet_libraries()
    from ssl_toolkit.pretrain import pretrain as run_pretrain

    if devices is not None and devices.isdigit():
        devices = int(devices)
    cfg = _build(
        config_file,
        {
            "task": task, "data.name": data, "backbone.name": backbone, "data.image_size": image_size,
            "trainer.epochs": epochs, "trainer.batch_size": batch_size, "trainer.lr": lr, "trainer.seed": seed,
            "trainer.accelerator": accelerator, "trainer.devices": devices, "trainer.num_nodes": num_nodes,
            "trainer.strategy": strategy, "trainer.precision": precision,
            "trainer.online_probe": False if no_online_probe else None, "trainer.progress_bar": False if quiet else None,
        },
        overrides,
    )
    meta = run_pretrain(cfg if resume is None else None, out=out, overwrite=overwrite, resume=resume)
    if not meta:  # non-zero DDP rank
        return
    fm = meta["final_metrics"]
    line = f"pretrained {meta['task']} on {meta['dataset']['name']}: {meta['epochs']} epochs, {meta['steps']} steps, {meta['wall_seconds']:.1f}s, loss {meta['final_loss']:.4f}"
    if "pretext_acc" in fm:
        line += f", pretext_acc {fm['pretext_acc']:.3f}"
    if "online_top1" in fm:
        line += f", online_top1 {fm['online_top1']:.3f}"
    click.echo(line)
    click.echo(f"run folder: {meta['run_dir']}")


# --------------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@click.argument("target", required=False)
@click.option("--data", "-d", help="Labelled dataset name or folder. [default: digits]")
@click.option("--mode", "-m", help="Evaluator: linear (more with `ssl probe --help`). [default: linear]")
@click.option("--label-fraction", type=float, help="Share of training labels used, 0 < F <= 1 (stratified, seeded). [default: 1]")
@click.option("--epochs", type=int, help="Epochs for modes that train through the backbone.")
@click.option("--lr", type=float, help="Learning rate for modes that train.")
@click.option("--batch-size", type=int, help="Batch size. [default: 256]")
@click.option("--seed", type=int, help="Seed of label subsets and training. [default: 0]")
@click.option("--random-init", is_flag=True, help="Evaluate an untrained --backbone instead (the baseline).")
@click.option("--backbone", "-b", default="resnet18", show_default=True, help="timm model for --random-init.")
@click.option("--config", "config_file", type=click.Path(), help="YAML config file (see configs/probe/).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override any probe config key (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object on the last line.")
def probe(target, data, mode, label_fraction, epochs, lr, batch_size, seed, random_init, backbone, config_file, overrides, as_json) -> None:
    """Evaluate a pretrained backbone on labelled data.

    TARGET is a run folder, a backbone file (.safetensors next to its meta.json) or a
    checkpoint-library name. Prints top-1/top-5 and writes probes/<mode>-<fraction>.json
    into the run folder.
    """
    _quiet_libraries()
    from ssl_toolkit.eval.probe import probe as run_probe

    cfg = _build(
        config_file,
        {"data.name": data, "mode": mode, "label_fraction": label_fraction, "epochs": epochs, "lr": lr,
         "batch_size": batch_size, "seed": seed},
        overrides,
    )
    result = run_probe(target, cfg, random_init=random_init, backbone=backbone)
    top5 = "-" if result["top5"] is None else f"{100 * result['top5']:.2f}"
    rows = [
        ("mode", result["mode"]),
        ("data", result["dataset"]),
        ("label fraction", f"{result['label_fraction']:g}"),
        ("train / test", f"{result['n_train']} / {result['n_test']}"),
        ("top-1 (%)", f"{100 * result['top1']:.2f}"),
        ("top-5 (%)", top5),
        ("seconds", f"{result['seconds']:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")
    if as_json:
        click.echo(json.dumps(result, separators=(",", ":")))


# --------------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tasks(as_json) -> None:
    """List every registered pretext task with its paper and input needs."""
    from ssl_toolkit.pretext import TASKS

    rows = []
    for name in TASKS.names():
        cls = TASKS.get(name)
        needs = []
        if cls.info.needs_colour:
            needs.append("colour")
        if cls.info.min_image_size:
            needs.append(f">= {cls.info.min_image_size} px")
        rows.append({"name": name, "description": cls.info.description, "paper": cls.info.paper, "needs": ", ".join(needs) or "any images"})
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['name']:<18} {r['description']}")
        click.echo(f"{'':<18} paper: {r['paper']}")
        click.echo(f"{'':<18} needs: {r['needs']}")


def run() -> None:
    """Console-script entry point: user errors become one line on stderr and exit code 2."""
    try:
        rc = main.main(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(UserError.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    run()
