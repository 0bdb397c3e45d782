"""``pretrain()``: plan -> data -> backbone + pretext task -> Lightning -> run folder -> library.

Each stage is one function below, in the order they run. Everything that can be refused
(config values, Lightning options, output paths, the library folder, the data, the task's
needs) is checked before the run folder is written. A run folder (:class:`RunFolder`)
holds the resolved ``config.yaml``, ``metrics.csv``, ``last.ckpt`` and the backbone
(``backbone.safetensors`` + ``meta.json``), so any run can be reproduced and resumed from it.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ssl_toolkit._version import __version__
from ssl_toolkit.api import Flag, caller_terms, config_fields, public
from ssl_toolkit.atomic import atomic_write_bytes
from ssl_toolkit.config import PretrainConfig, validate
from ssl_toolkit.errors import Interrupted, UserError, lost_peer, out_of_memory
from ssl_toolkit.folder_lock import FolderLock
from ssl_toolkit.ranks import is_primary_process
from ssl_toolkit.run_folder import RunFolder

RUN_DIR_ENV = "SSL_TOOLKIT_RUN_DIR"


@dataclass
class Plan:
    """What a call to :func:`pretrain` will do, decided before anything is written."""

    cfg: PretrainConfig
    folder: RunFolder
    resume: bool
    overwrite: bool
    name: str | None
    primary: bool  # False in the extra processes a DDP launcher starts
    finished: dict[str, Any] | None = None  # meta.json of a finished run that has nothing left to train
    saved_config: bytes | None = None  # a resumed run's config.yaml as it was, until its checkpoint has loaded
    lock: FolderLock | None = None  # held by the primary process while it writes the folder


@dataclass
class RunData:
    """The data stage's output: the source, its facts for the task, and the loaders."""

    source: Any
    facts: Any
    train_loader: DataLoader
    val_loader: DataLoader | None
    num_classes: int  # classes of the online probe (0 = none)


@dataclass
class RunModel:
    """The model stage's output."""

    backbone: nn.Module
    spec: Any
    task: Any
    resolved: dict[str, Any]  # the config with every default written out
    init_info: dict[str, Any] | None


def _warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def auto_resumed(out: str | Path | None, overwrite: bool, resume: str | Path | None) -> tuple[str | Path | None, bool, str | Path | None]:
    """``(out, overwrite, resume)`` for a run that goes on in ``out`` if it has begun there, and starts there otherwise.

    A folder with a checkpoint, or a finished run, is resumed; a run folder that stopped
    before its first checkpoint (nothing trained to keep) is started again; any other folder
    is started in, as ``out`` (refused when it holds other files). One command thus both
    starts a job and continues it after a requeue (see docs/scaling.md).
    """
    if resume is not None or overwrite:
        given = caller_terms("--resume", "resume") if resume is not None else caller_terms("--overwrite", "overwrite")
        raise UserError(f"{caller_terms('--auto-resume', 'auto_resume')} chooses between starting and resuming itself; leave {given} out")
    if out is None or not str(out).strip():
        raise UserError(
            f"{caller_terms('--auto-resume', 'auto_resume')} needs {caller_terms('--out', 'out')}: the folder to continue the run in, or to start it in"
        )
    folder = RunFolder(out)
    if folder.last_ckpt.is_file() or folder.is_finished():
        return None, False, out
    if folder.config.is_file():  # a run that stopped before its first checkpoint
        return out, True, None
    return out, False, None


@public
def pretrain(
    config: PretrainConfig | dict[str, Any] | str | Path | None = None,
    out: str | Path | None = None,
    overwrite: Flag = False,
    resume: str | Path | None = None,
    name: str | None = None,
    auto_resume: Flag = False,
) -> dict[str, Any]:
    """Pretrain a backbone with a pretext task.

    Args:
        config: A :class:`PretrainConfig`, a dict of its fields, or a YAML file of them (as
            ``--config``; unknown keys rejected).
            With ``resume``, the changes to the saved config: only how long to train, how
            often to save and how to log may change (see :mod:`ssl_toolkit.resume`).
        out: Run folder (default ``runs/<task>-<backbone>-<data>-<time>``).
        overwrite: Replace the run files already in ``out``.
        resume: A run folder to continue from its ``last.ckpt`` (its ``config.yaml`` is used).
            A finished run is left unchanged unless the changes ask for more training.
        name: Name of the backbone in the checkpoint library (default
            ``<task>-<backbone>-<data>-<date>``, made unique); the config's ``name`` the
            same (given both ways, they must agree). It is kept in ``config.yaml``, so a run
            cut short registers under it when a resume finishes it.
        auto_resume: Continue the run in ``out`` when it has begun there (as ``resume=out``),
            start it there otherwise: one call for a job that may be requeued.

    Returns:
        The backbone metadata (also in ``<run>/meta.json``) with ``run_dir`` added; for a
        finished run with nothing left to train, ``finished: True`` and its metadata. In the
        extra processes of a multi-process (DDP) run, which re-run the caller's script, an
        empty dict: only the primary process records the run.
    """
    if auto_resume:
        out, overwrite, resume = auto_resumed(out, bool(overwrite), resume)
    plan = plan_run(config, out, overwrite, resume, name)
    if plan.finished is not None:
        return {**plan.finished, "finished": True, "run_dir": str(plan.folder.path.resolve())}
    try:
        data = _build_data(plan)
        try:
            model = _build_model(plan, data)
        except (RuntimeError, MemoryError) as e:
            if (asked := out_of_memory(e)) is None:
                raise
            raise UserError(
                f"not enough memory to build the network and its task heads (an allocation of {asked} failed): "
                "a size in task_config (hidden_dim, output_dim, queue_size...) or the backbone is too large for this machine"
            ) from None
        try:
            _prepare_folder(plan, model, data)
            trainer, guard, seconds = _fit(plan, model, data)
            result = {} if trainer.global_rank != 0 else _finish(plan, model, data, trainer, guard, seconds)
        except BaseException as e:
            if plan.primary:  # --overwrite: a failed run gives the old one back; an interrupted one can resume
                resumable = isinstance(e, Interrupted | KeyboardInterrupt) and plan.folder.last_ckpt.is_file()
                plan.folder.settle_replaced(failed=not resumable)
                if resumable and isinstance(e, KeyboardInterrupt):  # outside Lightning's loop, e.g. while the backbone is saved
                    raise Interrupted(f"interrupted; checkpoint saved, continue with: ssl pretrain --resume {plan.folder}", 130) from None
            raise
        if plan.primary:
            plan.folder.settle_replaced(failed=False)
        return result
    finally:
        if plan.lock is not None:
            plan.lock.release()


# --------------------------------------------------------------------------- stage 1: the plan


def plan_run(config: Any, out: str | Path | None, overwrite: bool, resume: str | Path | None, name: str | None) -> Plan:
    """Resolve the config and the run folder, and check everything that needs no data."""
    from ssl_toolkit.library import check_library_writable, check_name, name_taken, refuse_inside_library
    from ssl_toolkit.loggers import check_logger
    from ssl_toolkit.pretext import TASKS
    from ssl_toolkit.pretext.base import check_task_signature
    from ssl_toolkit.trainer import check_lightning_options

    primary = is_primary_process()
    finished = None
    changed: list[str] = []  # what a resume changes in the saved config
    if out is not None and not str(out).strip():
        raise UserError("--out is empty; give the run folder to write")
    if resume is not None:
        from ssl_toolkit.resume import check_unedited, finished_state, limits_reached, resume_config, trained_epochs

        if overwrite:
            raise UserError(f"--resume {resume} continues the run in that folder; --overwrite would start it again: leave one out")

        if out is not None and Path(out).expanduser().resolve() != Path(resume).expanduser().resolve():
            raise UserError(f"--resume {resume} continues the run in that folder; --out {out} would be ignored: leave it out")
        folder = RunFolder(resume)
        if primary:
            folder.check_resumable()
        changes = config.model_dump(exclude_unset=True) if isinstance(config, PretrainConfig) else config_fields(config)
        cfg, changed = resume_config(folder, _with_name(changes, name))
        meta = finished_state(folder)
        meta = None if meta is None else trained_epochs(folder, meta)
        if meta is not None and (reached := limits_reached(cfg, meta)):
            finished = {**meta, "limits_reached": reached}
            unused = [caller_terms("--logger", "trainer.logger")] if "trainer.logger" in changed else []  # used by training only
            unused += [caller_terms("--name", "name")] if "name" in changed else []
            if unused and primary:
                _warn(
                    f"note: {folder} is already finished and nothing is trained, so {', '.join(unused)} {'is' if len(unused) == 1 else 'are'} not used"
                )
        elif primary:
            done, partial, recorded = folder.check_checkpoint()  # before config.yaml takes the changes
            check_unedited(folder, recorded)
            if done + partial > cfg.trainer.epochs:
                asked = caller_terms(f"--epochs {cfg.trainer.epochs}", f"trainer.epochs={cfg.trainer.epochs}")
                trained = f"{done} epoch{'s' if done != 1 else ''}" + (" and part of the next" if partial else "")
                raise UserError(f"{folder} has trained {trained} already, more than {asked} asks; give {done + partial} or more")
    else:
        cfg = config if isinstance(config, PretrainConfig) else validate(PretrainConfig, config_fields(config))
        if name is not None:
            cfg = cfg.model_copy(update=_with_name(cfg.model_dump(include={"name"}), name))
        folder = RunFolder(out) if out is not None else RunFolder.default(cfg.task, cfg.backbone.name, cfg.data.name)
        refuse_inside_library(folder.path, "--out", "a folder of your own")
    if not primary and os.environ.get(RUN_DIR_ENV):  # a DDP worker: same folder as the launching process
        folder = RunFolder(os.environ[RUN_DIR_ENV])
    library_name = cfg.name
    if resume is not None and "name" not in changed and library_name is not None and _registered_as(folder) == library_name:
        library_name = None  # this run's earlier backbone has the name: the one trained further gets a name of its own
    plan = Plan(cfg, folder, resume is not None, overwrite, library_name, primary, finished)
    if finished is not None:
        return plan
    check_task_signature(cfg.task, TASKS.get(cfg.task))  # unknown task, or one that cannot be built: fail before loading data
    check_lightning_options(cfg.trainer)
    check_logger(cfg.trainer.logger)
    if library_name is not None and (taken := name_taken(check_name(library_name))):
        raise UserError(f"checkpoint '{taken}' already exists in the library; choose another {caller_terms('--name', 'name')}")
    if primary:
        check_library_writable()
        plan.lock = FolderLock(folder.path).acquire()  # before the folder is judged: a second writer waits for nothing
        try:
            if resume is None:
                folder.check_new(overwrite)
        except BaseException:
            plan.lock.release()
            raise
    return plan


def _with_name(fields: dict[str, Any], name: str | None) -> dict[str, Any]:
    """Config ``fields`` with the ``name`` argument (``--name``) as their ``name``; two different names are refused."""
    if name is None:
        return fields
    if fields.get("name") not in (None, name):
        raise UserError(
            f"the library name is given twice, as {name} by {caller_terms('--name', 'name=')} and as {fields['name']} by the config; give it once"
        )
    return {**fields, "name": name}


def _registered_as(folder: RunFolder) -> str | None:
    """The library name a finished run's backbone was registered under (``library_name`` in its ``meta.json``)."""
    if not folder.meta.is_file():
        return None
    from ssl_toolkit.backbone_files import read_meta

    found = read_meta(folder.meta).get("library_name")
    return found if isinstance(found, str) else None


# --------------------------------------------------------------------------- stage 2: the data


def _build_data(plan: Plan) -> RunData:
    """Load the images and build the loaders (the one stage that knows how data is stored).

    In-memory sources are indexed in the training process; streamed folders are decoded by
    DataLoader workers that cut what the task's worker stage asks for from the original files.
    """
    from ssl_toolkit.data.base import readable_count
    from ssl_toolkit.data.loaders import split_loader
    from ssl_toolkit.data.sources import load_source
    from ssl_toolkit.data.stream import SkipLog
    from ssl_toolkit.pass_progress import silenced
    from ssl_toolkit.pretext import TASKS, DataFacts

    cfg = plan.cfg
    with silenced(not cfg.trainer.progress_bar):  # -q: not even the index's progress
        source = load_source(cfg.data)
    if cfg.data.strict:
        report_skipped(source, plan.folder, strict=True)
    if (n_train := readable_count(source.train)) < 2:  # one image is one batch of one: batch norm cannot train on it
        limit = f" (--set data.limit={cfg.data.limit})" if cfg.data.limit else ""
        raise UserError(f"pretraining needs at least 2 training images; {source.name} has {n_train}{limit}")
    from ssl_toolkit.data.processing import Processing, processed_stats

    processing = Processing.from_config(cfg.data)
    channels, mean, std = processed_stats(processing, source)  # what the backbone is fed (data.color_space, equalize, normalize)
    facts = DataFacts(
        channels=channels,
        image_size=source.image_size,
        mean=mean,
        std=std,
        name=source.name,
        grayscale_origin=source.grayscale_origin or channels == 1,
    )
    task_cls = TASKS.get(cfg.task)
    if processing.color_space != "rgb" and task_cls.info.needs_colour:
        raise UserError(f"{cfg.task} converts RGB itself; it needs data.color_space=rgb, not {processing.color_space}")
    changed = [
        f"data.{k}={v}"
        for k, v, plain in (("equalize", processing.equalize, "none"), ("normalize", processing.normalize, "zscore"))
        if v != plain
    ]
    if changed and task_cls.info.needs_colour:  # its input statistics are measured on the images as they are
        raise UserError(
            f"{cfg.task} converts RGB itself and normalises what it derives by the statistics of the images as they are; "
            f"it takes data.equalize=none and data.normalize=zscore, not {' and '.join(changed)}"
        )
    task_cfg = validate(task_cls.Config, cfg.task_config, what=f"task_config ({cfg.task})")
    task_cfg, note = task_cls.fit_geometry(task_cfg, facts, explicit=set(cfg.task_config))
    if note is not None:  # the adapted geometry goes into the resolved config (and config.yaml)
        plan.cfg = cfg = cfg.model_copy(update={"task_config": task_cfg.model_dump(mode="json")})
        if plan.primary:
            _warn(note)
    task_cls.check_data(task_cfg, facts)
    if plan.primary:
        warn_colour_views(cfg.task, task_cfg, processing.color_space)
        for line in [*task_cfg.unused_settings(), *task_cls.notes(task_cfg, facts, cfg.trainer.batch_size)]:
            _warn(f"note: {line}")
    stage = task_cls.worker_stage(task_cfg, facts)
    num_classes = (
        source.num_classes if cfg.trainer.online_probe and source.target_kind in ("multiclass", "binary") else 0
    )  # multi-label: no online probe
    t = cfg.trainer
    pin = source.streaming and t.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    skip = SkipLog(plan.folder.skipped, strict=cfg.data.strict)
    workers = cfg.data.workers if source.streaming else t.num_workers
    train_loader = split_loader(source.train, t.batch_size, True, seed=t.seed, stage=stage, workers=workers, skip=skip, pin_memory=pin)
    val_loader = None
    if num_classes and not len(source.test) and plan.primary:
        _warn(
            f"warning: {source.name} has no test images: no online probe, and "
            f"{caller_terms('ssl probe will need --data', 'probe() will need data=')} with a test split "
            "(a folder without train/ and test/ is split by data.test_fraction)"
        )
    if num_classes and len(source.test):
        val_loader = split_loader(
            source.test, max(t.batch_size, 256), False, workers=cfg.data.workers if source.streaming else 0, skip=skip, pin_memory=pin
        )
    return RunData(source, facts, train_loader, val_loader, num_classes)


def warn_colour_views(task: str, task_cfg: Any, color_space: str) -> None:
    """One note when a task's colour jitter or random grayscale will act on HSV, Lab or YCbCr channels.

    Processing runs before the task's views, so those augmentations treat the converted
    channels as if they were R, G and B.
    """
    from ssl_toolkit.data.augment import ViewConfig

    if color_space not in ("hsv", "lab", "ycbcr"):
        return
    names = ("views", "second_view")  # local_views follows views
    jittered = [k for k in names if isinstance(v := getattr(task_cfg, k, None), ViewConfig) and (v.jitter_p > 0 or v.gray_p > 0)]
    if jittered:
        _warn(
            f"note: {task}'s colour jitter and random grayscale act on the {color_space} channels as if they were R, G, B; "
            f"set jitter_p=0 and gray_p=0 in task_config.{' and task_config.'.join(jittered)} to turn them off"
        )


def first_images(split: Any, n: int) -> torch.Tensor:
    """``(n, C, S, S)`` uint8: the first ``n`` images in memory, or ``n`` readable sampled files when streaming."""
    if split.streaming:
        return split.sample(n, seed=0)
    return split.images[:n]


PRIOR_SAMPLE = 2048  # streamed images decoded for a task's data prior (in memory: all of them)


def report_skipped(source: Any, folder: RunFolder, strict: bool, resume: bool = False) -> None:
    """Unreadable files: exit 2 under ``strict``; otherwise one warning and ``skipped.txt`` in the run folder.

    A resumed run keeps the lines already in ``skipped.txt`` (files that went bad mid-run).
    """
    if not source.skipped:
        return
    if strict:
        source.refuse_unreadable()
    folder.write_skipped(source.skipped, keep=resume)
    if is_primary_process():
        _warn(f"warning: skipped {len(source.skipped)} unreadable image file(s) ({source.unreadable_names()}); list in {folder.skipped}")


# --------------------------------------------------------------------------- stage 3: the model


def _build_model(plan: Plan, data: RunData) -> RunModel:
    """Backbone + task for the data, the precision chosen, and the resolved config."""
    import lightning as L

    from ssl_toolkit.backbones import (
        AUTO_BACKBONE,
        DEFAULT_BACKBONE,
        SMALL_STEM_MAX_SIZE,
        STEM_POOL_MAX_SIZE,
        BackboneSpec,
        chosen_small_stem,
        create_backbone,
        family_of,
        feature_dim,
        resnet_small_max_size,
        resolve_auto,
    )
    from ssl_toolkit.data.sources import recorded_paths
    from ssl_toolkit.precision import choose_precision, emulated_bf16_note
    from ssl_toolkit.pretext import TASKS, PretextTask, build_task
    from ssl_toolkit.recompute import check_grad_checkpointing

    cfg, source, facts = plan.cfg, data.source, data.facts
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)  # the backbone's and heads' initial weights follow the seed
    task_cls = TASKS.get(cfg.task)
    task_cfg = validate(task_cls.Config, cfg.task_config, what=f"task_config ({cfg.task})")
    task_cls.check_data(task_cfg, facts)
    in_chans = task_cls.backbone_in_chans(task_cfg, facts)
    init_source = None
    if cfg.init_from and not plan.resume:  # continued pretraining: loaded first, so an unset stem_pool follows it
        from ssl_toolkit.library import load_backbone_any

        init_source = load_backbone_any(cfg.init_from)[:2]
        found = BackboneSpec.from_dict(init_source[1]["backbone"])
        if cfg.backbone.name == AUTO_BACKBONE:  # continued pretraining keeps the network it starts from
            cfg = plan.cfg = cfg.model_copy(update={"backbone": cfg.backbone.model_copy(update={"name": found.timm_name})})
        if cfg.backbone.stem_pool is None and not found.small_stem and family_of(cfg.backbone.name) == "resnet":
            cfg = plan.cfg = cfg.model_copy(update={"backbone": cfg.backbone.model_copy(update={"stem_pool": found.stem_pool})})
    if cfg.backbone.name == AUTO_BACKBONE:  # the resolved config records the choice, so a resume rebuilds it
        chosen = resolve_auto(cfg.backbone, source.image_size, cfg.trainer.accelerator)
        cfg = plan.cfg = cfg.model_copy(update={"backbone": chosen})
        if plan.primary and chosen.name != DEFAULT_BACKBONE:
            _warn(
                f"note: backbone auto is {chosen.name} at {source.image_size} px on a CPU ({DEFAULT_BACKBONE} on a GPU, and on a CPU "
                f"at {resnet_small_max_size('cpu')} px and less or above {STEM_POOL_MAX_SIZE} px); "
                + caller_terms("--backbone NAME chooses another", "backbone.name in the config chooses another")
            )
    # runs record what the automatic stem chose; a resumed config without it predates the CPU rule
    # (a resumed config without stem_pool predates the max-pool rule: it kept the pool)
    resnet_max = SMALL_STEM_MAX_SIZE if plan.resume else resnet_small_max_size(cfg.trainer.accelerator)
    backbone, spec = create_backbone(cfg.backbone, in_chans, source.image_size, resnet_max, 0 if plan.resume else STEM_POOL_MAX_SIZE)
    cpu_rule = family_of(cfg.backbone.name) == "resnet" and resnet_max < source.image_size <= SMALL_STEM_MAX_SIZE
    if cpu_rule and cfg.backbone.small_stem is None and plan.primary and not plan.resume:
        pool = "with its max-pool" if spec.stem_pool else "without its max-pool"
        _warn(
            f"note: {cfg.backbone.name} keeps timm's stem {pool} at {source.image_size} px on a CPU (a ResNet gets the small stem at "
            f"{resnet_max} px and less here, {SMALL_STEM_MAX_SIZE} on a GPU; the max-pool goes at {STEM_POOL_MAX_SIZE} px and less); "
            + caller_terms(
                "--set backbone.small_stem=true or backbone.stem_pool=true/false changes it",
                "backbone.small_stem=True or backbone.stem_pool=True/False in the config changes it",
            )
        )
    if cfg.trainer.grad_checkpointing:
        check_grad_checkpointing(backbone, cfg.backbone.name)
    init_info = None
    if init_source is not None:  # continued pretraining: start from those weights
        from ssl_toolkit.library import init_backbone_from

        init_info = init_backbone_from(backbone, spec, str(cfg.init_from), init_source)
    task = build_task(cfg.task, feature_dim(backbone), cfg.task_config, facts)
    if type(task).fit_data_prior is not PretextTask.fit_data_prior:  # only tasks with a data prior read images here
        prior = source.train.sample(PRIOR_SAMPLE, seed=cfg.trainer.seed) if source.streaming else source.train.images
        task.fit_data_prior(prior)  # data statistics the task needs (e.g. a colour prior)
    task.attach(backbone)  # after any init_from, so momentum encoders start from the same weights
    t = cfg.trainer
    precision = choose_precision(t.precision, t.accelerator, backbone, in_chans, task.backbone_input_size())
    if plan.primary and not plan.resume and (slow := emulated_bf16_note(precision, t.accelerator)):
        _warn(slow)
    resolved = cfg.model_dump(mode="json")
    resolved["data"] = recorded_paths(resolved["data"])  # a resume or probe from another working folder finds the data
    if cfg.init_from and Path(cfg.init_from).expanduser().exists():  # a folder or file, not a library name: as the data
        resolved["init_from"] = str(Path(cfg.init_from).expanduser().resolve())
    if cfg.backbone.small_stem is None:  # the automatic choice depends on the machine; a resume elsewhere keeps it
        resolved["backbone"]["small_stem"] = chosen_small_stem(spec, source.image_size)
    if cfg.backbone.stem_pool is None and family_of(cfg.backbone.name) == "resnet" and not spec.small_stem:
        resolved["backbone"]["stem_pool"] = spec.stem_pool  # a resume keeps what the rule chose
    resolved["task_config"] = task.config.model_dump(mode="json")
    resolved["trainer"].update(
        lr=t.lr or task_cls.default_lr,
        weight_decay=t.weight_decay if t.weight_decay is not None else task_cls.default_weight_decay,
        optimizer=t.optimizer or task_cls.default_optimizer,
        precision=precision,
    )
    plan.cfg = cfg.model_copy(update={"trainer": t.model_copy(update={"precision": precision})})
    return RunModel(backbone, spec, task, resolved, init_info)


# --------------------------------------------------------------------------- stage 4: the run folder


def _prepare_folder(plan: Plan, model: RunModel, data: RunData) -> None:
    """Everything is checked: only now is the run folder written (config.yaml, skipped.txt)."""
    if plan.primary:  # a failure from here on leaves the folder as it was (RunFolder.settle_replaced)
        if not plan.resume:
            plan.folder.create(plan.overwrite)
        os.environ[RUN_DIR_ENV] = str(plan.folder.path.resolve())
        report_skipped(data.source, plan.folder, strict=False, resume=plan.resume)
        if not plan.resume or plan.folder.read_config() != model.resolved:
            plan.saved_config = plan.folder.config.read_bytes() if plan.resume else None
            plan.folder.write_config(model.resolved)


# --------------------------------------------------------------------------- stage 5: training


def interrupt_outcome(trainer: Any, folder: RunFolder) -> str:
    """What an interrupted run left: the checkpoint written on the interrupt, an earlier one, or none."""
    from ssl_toolkit.callbacks import CheckpointOnInterrupt

    saver = next((c for c in trainer.callbacks if isinstance(c, CheckpointOnInterrupt)), None)
    if saver is None or saver.saved is not False:
        outcome = f"checkpoint saved, continue with: ssl pretrain --resume {folder}"
    elif folder.last_ckpt.is_file():
        outcome = f"its checkpoint could not be written (another process had stopped first); continue from the last one: ssl pretrain --resume {folder}"
    else:
        outcome = "its checkpoint could not be written (another process had stopped first) and none was saved before; run the command again"
    if saver is not None and saver.requeue_asked and trainer.is_global_zero:
        from ssl_toolkit.requeue import requeue_job

        outcome += f"; SIGUSR1: {requeue_job()}"
    return outcome


def _fit(plan: Plan, model: RunModel, data: RunData) -> tuple[Any, Any, float]:
    """Train with Lightning; returns (trainer, gradient guard, seconds)."""
    import lightning as L

    from ssl_toolkit.callbacks import (
        ConfigRecord,
        EpochEndCheckpoint,
        GradientGuard,
        OnlineProbe,
        RngState,
        SamplePictures,
        StartupClock,
        TaskStepEnd,
    )
    from ssl_toolkit.data.loaders import shared_by
    from ssl_toolkit.data.processing import Processing
    from ssl_toolkit.engine import PretrainModule
    from ssl_toolkit.loggers import finish_loggers, log_config
    from ssl_toolkit.resume import fixed_settings
    from ssl_toolkit.trainer import build_trainer, lightning_interrupts, quiet_lightning, restore_metrics

    t, folder = plan.cfg.trainer, plan.folder
    r = model.resolved["trainer"]
    module = PretrainModule(
        model.backbone,
        model.task,
        t,
        r["lr"],
        r["weight_decay"],
        r["optimizer"],
        seed=t.seed,
        processing=Processing.from_config(plan.cfg.data),
    )
    guard = GradientGuard()
    callbacks = [
        guard,
        TaskStepEnd(),
        RngState(),
        ConfigRecord(fixed_settings(model.resolved)),
        EpochEndCheckpoint(),
        SamplePictures(first_images(data.source.train, 16), folder.samples),
        StartupClock(),
    ]
    if data.num_classes:
        from ssl_toolkit.backbones import feature_dim

        callbacks.insert(0, OnlineProbe(feature_dim(model.backbone), data.num_classes))
    L.seed_everything(t.seed, workers=True, verbose=False)
    quiet_lightning()  # no banners (devices, tips) in the output
    trainer = build_trainer(t, folder.path, validate=data.val_loader is not None, callbacks=callbacks, resume=plan.resume)
    log_config(trainer.loggers, model.resolved)  # the experiment logger's hyperparameters
    train_loader = shared_by(data.train_loader, trainer.world_size)  # a batch over one process's share: cut to it
    ckpt_path = str(folder.last_ckpt) if plan.resume else None
    if ckpt_path is not None:
        restore_metrics(folder.metrics, folder.last_ckpt)
    start = time.time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")  # epoch-level metrics are logged anyway
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # the run folder's own config.yaml
        warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")  # the online probe is off: nothing to validate
        warnings.filterwarnings("ignore", message=".*Grad strides do not match bucket view strides.*")  # DDP, channels-last
        try:
            with lightning_interrupts(trainer, functools.partial(interrupt_outcome, trainer, folder)):
                trainer.fit(module, train_loader, data.val_loader, ckpt_path=ckpt_path)
        except FloatingPointError as e:
            raise UserError(f"training stopped: {e}; {_kept(folder)}") from None
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            from ssl_toolkit.outputs import describe_os_error

            again = f"; free some space, then continue with: ssl pretrain --resume {folder}" if folder.last_ckpt.is_file() else ""
            raise UserError(f"training stopped: {describe_os_error(e)}; {_kept(folder)}{again}") from None
        except (RuntimeError, MemoryError) as e:
            if trainer.world_size > 1 and (said := lost_peer(e)) is not None:  # a process killed (SIGKILL, the OOM killer)
                raise Interrupted(
                    f"training stopped at step {trainer.global_step}: another process of the run ended ({said}); {_kept(folder)}", 1
                ) from None
            if (asked := out_of_memory(e)) is not None:
                raise UserError(
                    f"training ran out of memory (an allocation of {asked} failed): a smaller --batch-size, trainer.activation_memory_mb "
                    f"or task_config sizes fit; {_kept(folder)}"
                ) from None
            if ckpt_path is None or "Error(s) in loading state_dict" not in str(e):
                raise
            detail = " ".join(str(e).split("\n\t", 1)[-1].split())
            if plan.saved_config is not None:  # the requested change is not kept for a run that cannot go on
                atomic_write_bytes(folder.config, plan.saved_config)
            raise UserError(
                f"cannot resume {folder}: last.ckpt does not fit the network its config.yaml describes "
                f"({detail[:160]}{'...' if len(detail) > 160 else ''}); was config.yaml edited?"
            ) from None
        finally:
            finish_loggers(trainer.loggers)
    return trainer, guard, time.time() - start


def _kept(folder: RunFolder) -> str:
    """What a failed run leaves to resume from."""
    return f"the last good checkpoint is kept in {folder.last_ckpt}" if folder.last_ckpt.is_file() else "no checkpoint was written yet"


# --------------------------------------------------------------------------- stage 6: backbone and library


def completed_epochs(trainer: Any) -> int:
    """Epochs trained to their last batch: Lightning counts an epoch that ``trainer.max_steps`` or the time budget cut short, which a resume goes on with."""
    epochs = int(trainer.current_epoch)
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return epochs - 1 if epochs > 0 and progress.current.processed and not progress.is_last_batch else epochs


def _finish(plan: Plan, model: RunModel, data: RunData, trainer: Any, guard: Any, seconds: float) -> dict[str, Any]:
    """Save the backbone with its metadata into the run folder and register it in the library."""
    from ssl_toolkit.callbacks import StartupClock
    from ssl_toolkit.checkpoints import save_backbone
    from ssl_toolkit.data.processing import Processing
    from ssl_toolkit.library import register_run

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if not metrics and trainer.global_step > 0:  # a resume with nothing left to train (its final save had failed)
        from ssl_toolkit.trainer import last_logged

        metrics = last_logged(plan.folder.metrics)
    meta = {
        "task": plan.cfg.task,
        "task_config": model.resolved["task_config"],
        "task_state": model.task.extra_state(),
        "backbone": model.spec.to_dict(),
        **model.task.backbone_input(),  # in_chans, mean, std (+ input_transform) of what the backbone sees
        "processing": Processing.from_config(plan.cfg.data).to_dict(),  # colour space, equalisation, normalisation
        "image_size": data.source.image_size,
        "dataset": data.source.describe(),
        "epochs": completed_epochs(trainer),
        "steps": int(trainer.global_step),
        "wall_seconds": round(seconds, 2),
        "startup_seconds": next((c.seconds for c in trainer.callbacks if isinstance(c, StartupClock)), None),
        "final_loss": metrics.get("loss_epoch", metrics.get("loss")),
        "final_metrics": metrics,
        "precision": model.resolved["trainer"]["precision"],
        "backbone_chunk": trainer.lightning_module.backbone_chunk,  # inputs per backbone pass (trainer.backbone_chunk, auto resolved); None: whole batch
        "world_size": int(trainer.world_size),
        "skipped_steps": guard.skipped_steps,
        "versions": {"ssl_toolkit": __version__, "torch": torch.__version__, "timm": __import__("timm").__version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(plan.folder.path.resolve()),
    }
    if model.init_info:
        meta["init_from"] = model.init_info
    if meta["steps"] == 0 and plan.primary:  # trainer.max_minutes ended before the first step (max_steps=0 is refused)
        start = "the backbone it started from" if model.init_info else "its random initialisation"
        why = " (trainer.max_minutes ran out)" if plan.cfg.trainer.max_minutes else ""
        _warn(f"warning: the run ended before its first step{why}: the backbone saved is {start}, untrained")
    meta = save_backbone(plan.folder.path, model.backbone, meta)
    try:
        entry = register_run(plan.folder.path, plan.name)
    except OSError as e:  # the library is full or unwritable: say what becomes of the run
        from ssl_toolkit.outputs import describe_os_error

        folder = plan.folder
        kept = folder.last_ckpt.is_file() and not (folder.path / folder.REPLACED).is_dir()  # RunFolder.settle_replaced
        then = f"the run is kept in {folder}: add it with `ssl checkpoints import {folder}`" if kept else f"{folder} is left as it was"
        raise UserError(f"the checkpoint library could not take the backbone: {describe_os_error(e)}; {then}") from None
    if plan.name is not None and entry["library_name"] != plan.name and plan.primary:  # checked free at the start, taken since
        _warn(
            f"warning: checkpoint name '{plan.name}' was taken by another run while this one trained; "
            f"this backbone is '{entry['library_name']}' (`ssl probe {entry['library_name']}`)"
        )
    return {**entry, "run_dir": meta["run_dir"]}
