"""``pretrain()``: data -> backbone + pretext task -> Lightning -> run folder.

A run folder holds the resolved ``config.yaml``, ``metrics.csv``, ``last.ckpt`` and the
backbone (``backbone.safetensors`` + ``meta.json``), so any run can be reproduced and
resumed from it.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
import torch
import yaml

from ssl_toolkit._version import __version__
from ssl_toolkit.atomic import atomic_write_text
from ssl_toolkit.backbones import create_backbone, feature_dim
from ssl_toolkit.checkpoints import save_backbone
from ssl_toolkit.config import PretrainConfig, validate
from ssl_toolkit.data.sources import load_source
from ssl_toolkit.engine import PretrainModule, build_trainer, make_loader, truncate_metrics
from ssl_toolkit.errors import Interrupted, UserError
from ssl_toolkit.precision import choose_precision
from ssl_toolkit.pretext import TASKS, DataFacts, build_task

CONFIG_FILE = "config.yaml"
LAST_CKPT = "last.ckpt"


def default_run_dir(cfg: PretrainConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    data = Path(cfg.data.name).name if os.sep in cfg.data.name else cfg.data.name
    return Path("runs") / f"{cfg.task}-{cfg.backbone.name}-{data}-{stamp}"


def check_run_dir(out: Path, overwrite: bool, resume: bool) -> None:
    """Refuse a non-empty folder unless ``overwrite`` (or resuming it); writes nothing."""
    if resume:
        if not (out / LAST_CKPT).is_file():
            raise UserError(f"cannot resume {out}: no {LAST_CKPT} in it")
        return
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already holds files; use --overwrite to replace them or --resume {out} to continue")


def create_run_dir(out: Path, overwrite: bool, resume: bool) -> None:
    """Make the run folder; with ``overwrite``, remove the run files a previous run left in it."""
    if overwrite and not resume and out.is_dir():
        for name in (CONFIG_FILE, LAST_CKPT, "metrics.csv", "hparams.yaml", "backbone.safetensors", "meta.json", "skipped.txt"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


RUN_DIR_ENV = "SSL_TOOLKIT_RUN_DIR"


def is_primary_process() -> bool:
    """False in the extra processes a DDP launcher starts (they re-run the same command)."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def report_skipped(source, run_dir: Path, strict: bool) -> None:
    """Unreadable files: exit 2 under ``strict``; otherwise one warning and ``skipped.txt`` in the run folder."""
    if not source.skipped:
        return
    first = ", ".join(Path(p).name for p, _ in source.skipped[:3])
    if strict:
        raise UserError(f"{len(source.skipped)} unreadable image file(s) in {source.name} (--strict): {first}{', ...' if len(source.skipped) > 3 else ''}")
    atomic_write_text(run_dir / "skipped.txt", "".join(f"{p}\t{why}\n" for p, why in source.skipped))
    if is_primary_process():
        _warn(f"warning: skipped {len(source.skipped)} unreadable image file(s) ({first}{', ...' if len(source.skipped) > 3 else ''}); list in {run_dir / 'skipped.txt'}")


def _warn(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def checkpoint_step(path: Path) -> int:
    """The global step stored in a Lightning checkpoint (read with ``weights_only=True``)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except Exception as e:  # noqa: BLE001  (any failure means the checkpoint is unusable)
        raise UserError(f"cannot resume from {path}: the checkpoint is unreadable ({type(e).__name__})") from None


def resolve_config(config: PretrainConfig | dict[str, Any] | None) -> PretrainConfig:
    if isinstance(config, PretrainConfig):
        return config
    return validate(PretrainConfig, dict(config or {}))


def pretrain(
    config: PretrainConfig | dict[str, Any] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: str | Path | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Pretrain a backbone with a pretext task.

    Args:
        config: A :class:`PretrainConfig` or a dict of its fields (unknown keys rejected).
        out: Run folder (default ``runs/<task>-<backbone>-<data>-<time>``).
        overwrite: Replace the run files already in ``out``.
        resume: A run folder to continue from its ``last.ckpt`` (its ``config.yaml`` is used).
        name: Name of the backbone in the checkpoint library (default
            ``<task>-<backbone>-<data>-<date>``, made unique).

    Returns:
        The backbone metadata (also in ``<run>/meta.json``) with ``run_dir`` added.
    """
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise UserError(f"cannot resume {resume}: no {CONFIG_FILE} in it")
        cfg = validate(PretrainConfig, yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {})
    else:
        cfg = resolve_config(config)
        run_dir = Path(out) if out is not None else default_run_dir(cfg)
    primary = is_primary_process()
    if not primary and os.environ.get(RUN_DIR_ENV):  # a DDP worker: same folder as the launching process
        run_dir = Path(os.environ[RUN_DIR_ENV])
    task_cls = TASKS.get(cfg.task)  # unknown task: fail before loading data
    if name is not None:
        from ssl_toolkit.library import check_name, name_taken

        if name_taken(check_name(name)):
            raise UserError(f"checkpoint '{name}' already exists in the library; choose another --name")
    if primary:
        check_run_dir(run_dir, overwrite, resume is not None)

    source = load_source(cfg.data)
    if cfg.data.strict:
        report_skipped(source, run_dir, strict=True)
    facts = DataFacts(
        channels=source.channels,
        image_size=source.image_size,
        mean=source.mean,
        std=source.std,
        name=source.name,
        grayscale_origin=source.grayscale_origin,
    )
    task_cfg = validate(task_cls.Config, cfg.task_config, what=f"task_config ({cfg.task})")
    task_cls.check_data(task_cfg, facts)
    backbone, spec = create_backbone(cfg.backbone, task_cls.backbone_in_chans(task_cfg, facts), source.image_size)
    init_info = None
    if cfg.init_from and resume is None:  # continued pretraining: start from those weights
        from ssl_toolkit.library import init_backbone_from

        init_info = init_backbone_from(backbone, spec, cfg.init_from)
    task = build_task(cfg.task, feature_dim(backbone), cfg.task_config, facts)
    task.fit_data_prior(source.train.images)  # data statistics the task needs (e.g. a colour prior)
    task.attach(backbone)  # after any init_from, so momentum encoders start from the same weights
    precision = choose_precision(
        cfg.trainer.precision, cfg.trainer.accelerator, backbone, task_cls.backbone_in_chans(task_cfg, facts), task.backbone_input_size()
    )
    cfg = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"precision": precision})})
    lr = cfg.trainer.lr or task_cls.default_lr
    wd = cfg.trainer.weight_decay if cfg.trainer.weight_decay is not None else task_cls.default_weight_decay
    opt = cfg.trainer.optimizer or task_cls.default_optimizer

    # everything is checked: only now does the run folder get written
    if primary:
        create_run_dir(run_dir, overwrite, resume is not None)
        os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    report_skipped(source, run_dir, strict=False)

    # the resolved config: every default written out, so the folder reproduces the run
    resolved = cfg.model_dump(mode="json")
    resolved["task_config"] = task.config.model_dump(mode="json")
    resolved["trainer"].update(lr=lr, weight_decay=wd, optimizer=opt, precision=precision)
    if resume is None and primary:
        atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(resolved, sort_keys=False))

    num_classes = source.num_classes if cfg.trainer.online_probe and source.labelled else 0
    module = PretrainModule(
        backbone, task, cfg.trainer, lr, wd, opt, num_classes=num_classes, seed=cfg.trainer.seed,
        sample_images=source.train.images[:16], samples_dir=run_dir / "samples",
    )
    train_loader = make_loader(
        source.train.images, source.train.labels, cfg.trainer.batch_size, True, cfg.trainer.num_workers, seed=cfg.trainer.seed
    )
    val_loader = make_loader(source.test.images, source.test.labels, max(cfg.trainer.batch_size, 256), False, 0) if num_classes and len(source.test) else None

    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    for logger_name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(logger_name).setLevel(logging.WARNING)  # no banners (devices, tips) before the progress bar
    trainer = build_trainer(cfg.trainer, run_dir, validate=val_loader is not None)
    start = time.time()
    ckpt_path = str(run_dir / LAST_CKPT) if resume is not None else None
    if ckpt_path is not None:
        truncate_metrics(run_dir / "metrics.csv", checkpoint_step(Path(ckpt_path)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        try:
            trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path)
        except FloatingPointError as e:
            raise UserError(f"training stopped: {e}; the last good checkpoint is kept in {run_dir}") from None
        except SIGTERMException:
            raise Interrupted(f"terminated at step {trainer.global_step}; checkpoint saved, continue with: ssl pretrain --resume {run_dir}", 143) from None
        except SystemExit:
            if trainer.interrupted:  # Ctrl-C: Lightning shut down gracefully
                raise Interrupted(f"interrupted at step {trainer.global_step}; checkpoint saved, continue with: ssl pretrain --resume {run_dir}", 130) from None
            raise
    if trainer.global_rank != 0:
        return {}
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    meta = {
        "task": cfg.task,
        "task_config": resolved["task_config"],
        "task_state": task.extra_state(),
        "backbone": spec.to_dict(),
        **task.backbone_input(),  # in_chans, mean, std (+ input_transform) of what the backbone sees
        "image_size": source.image_size,
        "dataset": source.describe(),
        "epochs": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        "wall_seconds": round(time.time() - start, 2),
        "final_loss": metrics.get("loss_epoch", metrics.get("loss")),
        "final_metrics": metrics,
        "precision": resolved["trainer"]["precision"],
        "world_size": int(trainer.world_size),
        "skipped_steps": module.skipped_steps,
        "versions": {"ssl_toolkit": __version__, "torch": torch.__version__, "timm": __import__("timm").__version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(run_dir.resolve()),
    }
    if init_info:
        meta["init_from"] = init_info
    meta = save_backbone(run_dir, module.backbone, meta)
    from ssl_toolkit.library import register_run

    return {**register_run(run_dir, name), "run_dir": meta["run_dir"]}
