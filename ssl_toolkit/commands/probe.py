"""`ssl probe`."""

from __future__ import annotations

import click

from ssl_toolkit.cli import CONTEXT, FINITE, LazyHelpOption, build_config, echo_rows, main, one_config, quiet_libraries, ranged_option
from ssl_toolkit.completion import complete_data, complete_mode, complete_target


def _mode_help() -> str:
    from ssl_toolkit.evaluators import EVALUATORS

    names = ", ".join(EVALUATORS.names())
    return f"Evaluator: {names} (see docs/evaluators.md). [default: linear]"


def _set_help() -> str:
    from ssl_toolkit.evaluators import EVALUATORS

    own = []
    for name in EVALUATORS.names():
        fields = list(EVALUATORS.get(name).Config.model_fields)
        if fields:
            own.append(f"{name}: {', '.join(fields)}")
    return "Override any probe config key (repeatable); an evaluator's own settings are evaluator_config.KEY (" + "; ".join(own) + ")."


PROBE = "ssl_toolkit.config:ProbeConfig"


@main.command(context_settings=CONTEXT)
@click.argument("target", required=False, shell_complete=complete_target)
@click.option(
    "--data",
    "-d",
    shell_complete=complete_data,
    help="Labelled dataset name or folder. [default: the dataset the backbone was pretrained on; digits with --random-init]",
)
@click.option("--mode", "-m", cls=LazyHelpOption, help_text=_mode_help, shell_complete=complete_mode)
@click.option("--label-fraction", type=FINITE, help="Share of training labels used, 0 < F <= 1 (stratified, seeded). [default: 1]")
@ranged_option(
    "--epochs",
    type=int,
    model=PROBE,
    key="epochs",
    text="partial/finetune: training epochs",
    default="10, or more to make at least 100 optimiser steps",
)
@click.option("--lr", type=FINITE, help="partial/finetune: AdamW learning rate (the new head uses 10x). [default: 0.001]")
@click.option(
    "--batch-size", type=int, help="Images per batch: training (partial/finetune), feature extraction (linear/knn). [default: 256]"
)
@click.option("--freeze-stages", type=int, help="partial: freeze the stem and the first K stages. [default: all but the last]")
@click.option("--layer-decay", type=FINITE, help="finetune/partial: layer-wise lr decay, 0 < d <= 1. [default: 1 (off)]")
@click.option(
    "--augment",
    help="partial/finetune: none, basic, randaugment, autoaugment, trivialaugment, or an albumentations FILE.yaml (albumentations.save). [default: basic]",
)
@click.option("--k", "k", type=int, help="knn: neighbours. [default: 200]")
@click.option("--temperature", type=FINITE, help="knn: vote temperature. [default: 0.1]")
@click.option("--accelerator", help="cpu, gpu, auto (Lightning). [default: auto]")
@ranged_option("--seed", type=int, model=PROBE, key="seed", text="Seed of label subsets and training", default="0")
@click.option("--random-init", is_flag=True, help="Evaluate an untrained --backbone instead (the baseline).")
@click.option("--backbone", "-b", default="auto", show_default=True, help="timm model for --random-init (auto: as ssl pretrain chooses).")
@click.option(
    "--small-stem/--timm-stem",
    default=None,
    help="--random-init: the small-image rule (3x3 stride-1 stem, ...) or timm's own stem. [default: the rule at 64 px and less; a ResNet on a CPU: 16 px and less]",
)
@click.option(
    "--stem-pool/--no-stem-pool",
    default=None,
    help="--random-init, a ResNet with timm's stem: keep its max-pool or drop it. [default: dropped at 32 px and less]",
)
@click.option(
    "--config", "config_file", type=click.Path(), multiple=True, callback=one_config, help="YAML config file (see configs/probe/)."
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", cls=LazyHelpOption, help_text=_set_help)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object on stdout (the table goes to stderr).")
def probe(
    target,
    data,
    mode,
    label_fraction,
    epochs,
    lr,
    batch_size,
    freeze_stages,
    layer_decay,
    augment,
    k,
    temperature,
    accelerator,
    seed,
    random_init,
    backbone,
    small_stem,
    stem_pool,
    config_file,
    overrides,
    as_json,
) -> None:
    """Evaluate a pretrained backbone on labelled data.

    TARGET is a run folder, a backbone file (.safetensors next to its meta.json) or a
    checkpoint-library name. Prints top-1/top-5 and writes probes/<dataset>-<mode>-<fraction>.json
    into the run folder. With --random-init (no TARGET), an untrained --backbone is
    evaluated instead: the baseline of every mode; `--mode finetune --random-init` is the
    supervised-from-scratch baseline.
    """
    quiet_libraries()
    from ssl_toolkit.errors import UserError
    from ssl_toolkit.eval.probe import probe as run_probe
    from ssl_toolkit.eval.probe import result_json
    from ssl_toolkit.units import fraction_text

    if random_init and target is not None:
        raise UserError(f"give a TARGET or --random-init, not both ({target} would not be evaluated)")
    if not random_init and (backbone != "auto" or small_stem is not None or stem_pool is not None):
        raise UserError(
            "--backbone, --small-stem/--timm-stem and --stem-pool/--no-stem-pool choose the --random-init baseline; add --random-init"
        )
    cfg = build_config(
        config_file,
        {
            "data.name": data,
            "mode": mode,
            "label_fraction": label_fraction,
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "evaluator_config.augment": augment,
            "accelerator": accelerator,
            "seed": seed,
            "evaluator_config.freeze_stages": freeze_stages,
            "evaluator_config.layer_decay": layer_decay,
            "evaluator_config.k": k,
            "evaluator_config.temperature": temperature,
        },
        overrides,
    )
    baseline = {"name": backbone, "small_stem": small_stem, "stem_pool": stem_pool} if random_init else "auto"
    result = run_probe(target, cfg, random_init=random_init, backbone=baseline)
    rows = [
        ("mode", result["mode"]),
        ("data", result["dataset"]),
        ("label fraction", fraction_text(result["label_fraction"])),
        ("train / test", f"{result['n_train']} / {result['n_test']}"),
        *_k_row(result, _asked_k(result["mode"], cfg.get("evaluator_config", {}))),
        *metric_rows(result),
        ("seconds", f"{result['seconds']:.1f}"),
    ]
    echo_rows(rows, err=as_json)
    if as_json:
        click.echo(result_json(result))  # as the record file is written


def _asked_k(mode: str, settings: dict) -> object:
    """The ``k`` the evaluator was asked for: the one given, else its own default (knn: 200)."""
    from ssl_toolkit.evaluators import EVALUATORS

    if settings.get("k") is not None:
        return settings["k"]
    field = EVALUATORS.get(mode).Config.model_fields.get("k")
    return None if field is None else field.default


def _k_row(result: dict, asked: object) -> list[tuple[str, str]]:
    """kNN's neighbour count, saying so when the training set was smaller than the ``k`` asked."""
    if "k" not in result:
        return []
    clamped = isinstance(asked, int) and asked > result["k"]
    return [("k", f"{result['k']} (of {asked} asked: the training set's size)" if clamped else str(result["k"]))]


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def metric_rows(result: dict) -> list[tuple[str, str]]:
    """The metrics that fit the targets: top-1/top-5, binary ROC-AUC/F1/precision/recall, or multi-label mAP/F1."""
    kind = result.get("target_kind", "multiclass")
    keys: tuple[tuple[str, str], ...]
    if kind == "binary":
        keys = (
            ("ROC-AUC (%)", "roc_auc"),
            ("accuracy (%)", "accuracy"),
            ("F1 (%)", "f1"),
            ("precision (%)", "precision"),
            ("recall (%)", "recall"),
        )
    elif kind == "multilabel":
        keys = (("mAP (%)", "mAP"), ("micro F1 (%)", "micro_f1"), ("macro F1 (%)", "macro_f1"))
    else:
        keys = (("top-1 (%)", "top1"), ("top-5 (%)", "top5"))
    rows = [(label, _pct(result.get(key))) for label, key in keys]
    if kind == "multilabel":
        aps = ", ".join(f"{c} {_pct(a)}" for c, a in zip(result.get("classes") or [], result.get("per_class_ap") or []))
        rows.append(("AP per class (%)", aps))
    return rows
