"""`ssl pretrain`."""

from __future__ import annotations

import click

from ssl_toolkit.cli import CONTEXT, FINITE, LazyHelpOption, build_config, main, one_config, quiet_libraries, ranged_option
from ssl_toolkit.completion import complete_data, complete_precision, complete_target, complete_task, data_names, task_names


def _task_help() -> str:
    return f"Pretext task: {', '.join(task_names())} (see `ssl tasks`). [default: rotation]"


def _data_help() -> str:
    return f"Dataset name ({', '.join(data_names())}) or image folder. [default: digits]"


PRETRAIN = "ssl_toolkit.config:PretrainConfig"


@main.command(context_settings=CONTEXT)
@click.option("--task", "-t", cls=LazyHelpOption, help_text=_task_help, shell_complete=complete_task)
@click.option("--data", "-d", cls=LazyHelpOption, help_text=_data_help, shell_complete=complete_data)
@click.option("--backbone", "-b", help="timm model name, or auto. [default: auto: resnet10t on a CPU at 17-32 px, else resnet18]")
@ranged_option("--image-size", type=int, model=PRETRAIN, key="data.image_size", text="Square image side in pixels", default="the dataset's")
@ranged_option("--epochs", type=int, model=PRETRAIN, key="trainer.epochs", text="Training epochs", default="10")
@ranged_option("--batch-size", type=int, model=PRETRAIN, key="trainer.batch_size", text="Images per batch (per device)", default="256")
@click.option("--lr", type=FINITE, help="Peak learning rate. [default: the task's]")
@ranged_option("--seed", type=int, model=PRETRAIN, key="trainer.seed", text="Random seed", default="0")
@click.option(
    "--config", "config_file", type=click.Path(), multiple=True, callback=one_config, help="YAML config file (see configs/pretrain/)."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any config key, e.g. --set trainer.warmup_epochs=1 (repeatable).",
)
@click.option("--out", "-o", type=click.Path(), help="Run folder. [default: runs/<task>-<backbone>-<data>-<time>]")
@click.option("--overwrite", is_flag=True, help="Replace the run files already in --out.")
@click.option("--resume", type=click.Path(), help="Continue the run in this folder from its last checkpoint.")
@click.option(
    "--auto-resume",
    is_flag=True,
    help="Continue the run in --out if it has begun there, else start it there: one command for a job that may be requeued.",
)
@click.option("--accelerator", help="cpu, gpu, auto, ... (Lightning). [default: auto]")
@click.option("--devices", help="Devices per node, e.g. 1, 2 or auto. [default: 1]")
@click.option("--num-nodes", type=int, help="Nodes for multi-node DDP. [default: 1]")
@click.option("--strategy", help="Lightning strategy, e.g. ddp. [default: auto]")
@click.option(
    "--precision",
    shell_complete=complete_precision,
    help="auto, 32-true, bf16-mixed, 16-mixed; auto = bf16-mixed where the device has native bfloat16. [default: auto]",
)
@click.option("--no-online-probe", is_flag=True, default=None, help="Do not train the online linear probe on labelled data.")
@click.option(
    "--logger",
    type=click.Choice(["csv", "tensorboard", "wandb", "mlflow"]),
    help="Experiment logger besides metrics.csv (always written); tensorboard, wandb and mlflow need their extra. [default: csv]",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar (or progress lines when stderr is not a terminal).")
@click.option("--strict", is_flag=True, default=None, help="Exit 2 listing unreadable image files instead of skipping them.")
@click.option("--name", help="Name in the checkpoint library. [default: <task>-<backbone>-<data>-<date>, made unique]")
@click.option(
    "--init-from",
    shell_complete=complete_target,
    help="Start from this backbone (library name, run folder or file); same architecture required.",
)
def pretrain(
    task,
    data,
    backbone,
    image_size,
    epochs,
    batch_size,
    lr,
    seed,
    config_file,
    overrides,
    out,
    overwrite,
    resume,
    auto_resume,
    accelerator,
    devices,
    num_nodes,
    strategy,
    precision,
    no_online_probe,
    logger,
    quiet,
    name,
    init_from,
    strict,
) -> None:
    """Pretrain a backbone with a pretext task and write a run folder.

    The run folder gets config.yaml (resolved), metrics.csv, last.ckpt, and the backbone as
    backbone.safetensors + meta.json.
    """
    quiet_libraries()
    from ssl_toolkit.pretraining import auto_resumed
    from ssl_toolkit.pretraining import pretrain as run_pretrain

    if auto_resume:
        out, overwrite, resume = auto_resumed(out, overwrite, resume)

    if devices is not None and devices.isdigit():
        devices = int(devices)
    cfg = build_config(
        config_file,
        {
            "task": task,
            "data.name": data,
            "backbone.name": backbone,
            "data.image_size": image_size,
            "trainer.epochs": epochs,
            "trainer.batch_size": batch_size,
            "trainer.lr": lr,
            "trainer.seed": seed,
            "trainer.accelerator": accelerator,
            "trainer.devices": devices,
            "trainer.num_nodes": num_nodes,
            "trainer.strategy": strategy,
            "trainer.precision": precision,
            "trainer.online_probe": False if no_online_probe else None,
            "trainer.logger": logger,
            "trainer.progress_bar": False if quiet else None,
            "init_from": init_from,
            "data.strict": strict,
            "name": name,  # an option: it overrides a config file's name, as --epochs its trainer.epochs
        },
        overrides,
    )
    meta = run_pretrain(cfg, out=out, overwrite=overwrite, resume=resume)
    if not meta:  # non-zero DDP rank
        return
    if meta.get("finished"):
        click.echo(
            f"{meta['run_dir']} is already finished ({_count(meta['epochs'], 'epoch')}, {_count(meta['steps'], 'step')}); nothing changed. "
            f"To train further: ssl pretrain --resume {resume} {_further(meta)}"
        )
        return
    fm = meta["final_metrics"]
    where = f" ({meta['dataset']['path']})" if meta["dataset"].get("path") else ""
    line = f"pretrained {meta['task']} on {meta['dataset']['name']}{where}: {_count(meta['epochs'], 'epoch')}, {_count(meta['steps'], 'step')}, {meta['wall_seconds']:.1f}s{' since the resume' if resume else ''}, loss {_number(meta.get('final_loss'))}"
    if "pretext_acc" in fm:
        line += f", pretext_acc {fm['pretext_acc']:.3f}"
    if "online_top1" in fm:
        line += f", online_top1 {fm['online_top1']:.3f}"
    click.echo(line)
    click.echo(f"run folder: {meta['run_dir']}")
    if meta.get("library_name"):
        click.echo(f"checkpoint: {meta['library_name']} (use it by name: ssl probe {meta['library_name']})")


def _number(x: object) -> str:
    return f"{x:.4f}" if isinstance(x, int | float) else "-"


def _further(meta: dict) -> str:
    """The options that raise the limits a finished run reached (``limits_reached``)."""
    reached = meta.get("limits_reached") or ["trainer.epochs"]
    options = [f"--epochs N (N > {meta['epochs']})"] if "trainer.epochs" in reached else []
    if "trainer.max_steps" in reached:
        options.append(f"--set trainer.max_steps=M (M > {meta['steps']}, or -1 for no limit)")
    return " ".join(options)


def _count(n: int, noun: str) -> str:
    """``1 epoch``, ``3 epochs``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")
