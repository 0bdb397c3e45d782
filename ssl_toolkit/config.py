"""Typed configs for every command, loaded from YAML with ``--set key=value`` overrides.

Unknown keys are rejected (``extra="forbid"``) with a did-you-mean hint. The resolved
config is written next to every run so that any run can be reproduced from its folder.
"""

from __future__ import annotations

import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ssl_toolkit.errors import UserError, did_you_mean
from ssl_toolkit.terminal import quoted_if_odd

SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit


def _path_text(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


ColorSpace = Literal["rgb", "hsv", "lab", "ycbcr", "gray"]
Equalize = Literal["none", "global", "clahe"]
Normalize = Literal["zscore", "minmax"]

#: A name or a path: a ``pathlib.Path`` given from Python is taken as its text.
PathText = Annotated[str, BeforeValidator(_path_text)]


def number_without_bool(annotation: Any) -> bool:
    """Whether a field of this type takes numbers but not ``true``/``false`` (``int``, ``float | None``, ...)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return number_without_bool(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return any(number_without_bool(a) for a in args) and not any(takes_bool(a) for a in args)
    return annotation in (int, float)


def takes_bool(annotation: Any) -> bool:
    """Whether ``true``/``false`` is one of a type's own values (``bool``, ``Literal[..., True]``, ``Any``)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return takes_bool(typing.get_args(annotation)[0])
    if origin is Literal:
        return any(isinstance(a, bool) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return any(takes_bool(a) for a in typing.get_args(annotation))
    return annotation in (bool, Any)


class StrictModel(BaseModel):
    """Base for all configs: unknown keys are errors, and so are infinite or NaN numbers.

    A number field refuses ``true``/``false``: YAML reads ``epochs: yes`` as ``true``, which
    pydantic would take as ``1``.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and number_without_bool(field.annotation):
            raise ValueError(f"should be a number, not {str(value).lower()}")
        return value


class DataConfig(StrictModel):
    """Which images to use and how to size them.

    Attributes:
        name: A registered dataset (``digits``, ``synthetic``, ``fashion-mnist``) or a folder path.
        image_size: Square side the images are resized to; ``None`` keeps the dataset's default.
        split_seed: Seed of the stratified train/test split (when the data has none) and of ``synthetic``.
        test_fraction: Share of each class held out as test when the data has no split.
        split_draw: How a folder without its own split is split, and ``limit``'s subset drawn:
            ``names`` ranks each file by a seeded hash of its path, so files added to or
            removed from the folder leave the others where they were (a folder that grows keeps
            its test files in test); ``listing`` is a seeded permutation of the readable files in
            listing order, the rule of runs whose ``config.yaml`` has no ``split_draw`` (a resume
            or a probe of such a run keeps it).
        limit: Use at most this many training images (seeded random subset).
        path: Where to look first for ``fashion-mnist``.
        synthetic_train: Training images of ``synthetic``.
        synthetic_test: Test images of ``synthetic``.
        synthetic_classes: Shape classes of ``synthetic`` (2 to 6).
        strict: Refuse a folder with unreadable files (exit 2) instead of skipping them; when
            streaming, stop on the first file that fails to decode during training.
        stream: Folders only: ``true`` decodes files in DataLoader workers during training (crops
            from the original photos, memory independent of the number of images); ``false``
            decodes everything into memory first; ``auto`` streams when the decoded images would
            need over a quarter of the available memory.
        max_pixels: Files with more pixels than this are listed as unreadable instead of decoded.
        workers: DataLoader worker processes that decode streamed files (``None`` = the CPU count less one, at most 8).
        color_space: What the backbone sees: ``rgb``, ``hsv``, ``lab``, ``ycbcr`` or ``gray``
            (``ssl_toolkit/data/processing.py``); recorded in ``meta.json``.
        equalize: Histogram equalisation per image: ``none``, ``global`` or ``clahe``.
        normalize: ``zscore`` (mean / std) or ``minmax`` (min / range) per channel, measured
            on the processed training images.
        labels: Folders only: a ``file,labels`` CSV of multi-label targets (``None`` = the folder's
            ``labels.csv`` when it has one; see ``docs/data.md``).
    """

    name: PathText = "digits"
    image_size: int | None = Field(default=None, ge=8, le=1024)
    split_seed: int = Field(default=0, ge=0, le=SEED_MAX)
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    split_draw: Literal["names", "listing"] = "names"
    limit: int | None = Field(default=None, ge=1)
    path: PathText | None = None
    synthetic_train: int = Field(default=1200, ge=1)
    synthetic_test: int = Field(default=300, ge=1)
    synthetic_classes: int = Field(default=6, ge=2, le=6)
    strict: bool = False
    stream: Literal["auto"] | bool = "auto"
    max_pixels: int | None = Field(default=60_000_000, ge=1)
    workers: int | None = Field(default=None, ge=0, le=64)
    labels: PathText | None = None
    color_space: ColorSpace = "rgb"
    equalize: Equalize = "none"
    normalize: Normalize = "zscore"


class BackboneConfig(StrictModel):
    """A timm backbone.

    Attributes:
        name: ``timm.create_model`` name, or ``auto``: resnet18, except resnet10t where a
            ResNet trained on a CPU keeps timm's stem without its max-pool (17-32 px; see
            :func:`ssl_toolkit.backbones.auto_backbone`).
        small_stem: The family's small-image rule (a ResNet's 3x3 stride-1 stem without
            max-pool, a ConvNeXt's 1x1 stem, a ViT's 4 px patches); ``None`` = automatic: on
            at 64 px and less (a ResNet trained on a CPU: at 16 px and less).
        stem_pool: A ResNet keeping timm's stem keeps its max-pool (total stride 32; without
            it 16); ``None`` = automatic: the max-pool goes at 32 px and less.
        kwargs: Extra ``timm.create_model`` keyword arguments.
    """

    name: str = "auto"
    small_stem: bool | None = None
    stem_pool: bool | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_stem(self) -> BackboneConfig:
        if self.small_stem and self.stem_pool:
            raise ValueError("small_stem=true has no max-pool; leave stem_pool unset")
        for key, why in (("in_chans", "the data's channels"), ("num_classes", "0: a backbone gives features")):
            if key in self.kwargs:  # the toolkit's value would win, and the file would say otherwise
                raise ValueError(f"kwargs.{key} is set by the toolkit ({why}); leave it out")
        for key, value in self.kwargs.items():  # timm's drop_rate, drop_path_rate, ...: probabilities
            if key.endswith("_rate") and not (isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1):
                raise ValueError(f"kwargs.{key} is a probability, 0 <= p < 1 (got {value!r})")
        return self


def _precision_text(value: Any) -> Any:
    """``32`` or ``16`` read from YAML as a number: the precision of that name."""
    return str(value) if type(value) is int and value in (16, 32) else value


class TrainerConfig(StrictModel):
    """Optimisation and Lightning Trainer settings.

    Attributes:
        epochs: Training epochs.
        max_steps: Stop after this many optimiser steps (-1 = no limit).
        max_minutes: Stop after this wall-clock budget or the epochs (``max_steps``), whichever
            comes first; the learning-rate cosine then follows the share of the budget spent, or
            of the planned steps where that is further along, so it ends at zero either way.
        batch_size: Images per batch and process.
        lr: Peak learning rate (``None`` = the task's default).
        weight_decay: Weight decay (``None`` = the task's default).
        optimizer: ``adamw``, ``sgd`` or ``lars`` (``None`` = the task's default).
        warmup_epochs: Linear warm-up before the cosine decay, in epochs of the data (also when
            ``max_steps`` ends the run sooner; at most the whole run).
        precision: Lightning precision (``32-true``, ``bf16-mixed``, ``16-mixed``), or ``auto``:
            ``bf16-mixed`` where the device computes bfloat16 natively, else ``32-true``.
        accelerator: Lightning accelerator (``cpu``, ``gpu``, ``auto``).
        devices: Devices per node.
        num_nodes: Nodes (multi-node DDP).
        strategy: Lightning strategy (``auto``, ``ddp``, ...).
        sync_batchnorm: Under DDP on GPUs, normalise each BatchNorm with the statistics of the
            global batch (torch's ``SyncBatchNorm``, through Lightning) instead of each process's
            own; refused on a CPU, where torch's ``SyncBatchNorm`` does not run.
        seed: Seed of weights, data order and augmentation.
        num_workers: DataLoader worker processes (the data is in memory; 0 is usually fastest).
        log_every_n_steps: Step-level logging interval.
        checkpoint_every_n_steps: Also write ``last.ckpt`` every N optimiser steps.
        checkpoint_every_minutes: Also write ``last.ckpt`` every N minutes of training (``0`` = only
            at epoch ends and interruptions); ``last.ckpt`` is always written at every epoch end.
        logger: Where metrics go besides ``metrics.csv`` (always written): ``csv`` (only there),
            ``tensorboard`` (``<run>/tensorboard``), ``wandb`` or ``mlflow`` (``<run>/mlruns`` unless
            ``MLFLOW_TRACKING_URI`` is set). Each needs its extra, e.g. ``pip install 'ssl-toolkit[tensorboard]'``.
        progress_every_n_steps: When stderr is not a terminal, one progress line every N steps
            (and at the last one) instead of the progress bar.
        online_probe: Train a linear probe on detached features when the data has labels.
        progress_bar: Show the progress bar.
        channels_last: Run the backbone in channels-last memory layout: ``true``, ``false``,
            or ``auto`` (on, except for float32 on a CPU, where NCHW measured about 10%
            faster; channels-last is faster with bf16 on CPUs with oneDNN and on tensor-core
            GPUs; see ``docs/benchmarks.md``).
        small_map_conv: Compute convolutions on small maps (up to 4x4 inputs, e.g. the last
            stages of a ResNet on 28-32 px images) as one dense matrix product, and in bf16
            the weight gradient of those with up to 4x4 outputs as one product with the
            input's patches, with the same result: ``true``, ``false``, or ``auto`` (on a
            CPU, where oneDNN's kernels for such maps ran several times slower, unless
            ``compile`` compiled the backbone; ``ssl_toolkit/small_map_conv.py``).
        compile: ``torch.compile`` the backbone (inductor): ``true``, ``false``, or ``auto``
            (only where it was measured to win end to end, compile time included, for the
            run's length; see ``ssl_toolkit/compile.py`` and ``docs/benchmarks.md``).
        grad_checkpointing: Keep only each block's input in the forward pass and recompute the
            rest in the backward pass (timm's ``set_grad_checkpointing``): much less memory for
            activations, for about a third more compute per step (``ssl_toolkit/recompute.py``).
        backbone_chunk: Run the backbone on at most this many inputs at a time and recompute
            each chunk in the backward pass (gradient caching): the loss still sees the whole
            batch (all of NT-Xent's negatives), and activation memory is that of one chunk,
            for one more backbone forward per step (``ssl_toolkit/chunked.py``). ``None``: the
            whole batch at once. ``auto``: on a CPU, measured at the first step, only when the
            whole batch would keep more than ``activation_memory_mb`` of activations, in chunks
            keeping at most an eighth of it (and of at least 8 inputs); on other accelerators
            the whole batch.
        activation_memory_mb: What ``backbone_chunk: auto`` lets one step's backbone keep for
            the backward pass on a CPU, in MiB. The default keeps SimCLR on 224 px photos
            (resnet18, batch 64) under 2 GB in all, and chunks no task's default batch on
            28-32 px images, even in float32 (``docs/scaling.md``).
    """

    epochs: int = Field(default=10, ge=1, le=1_000_000)
    max_steps: int = Field(default=-1, ge=-1, le=1_000_000_000)
    max_minutes: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=256, ge=2)
    lr: float | None = Field(default=None, gt=0)
    weight_decay: float | None = Field(default=None, ge=0)
    optimizer: Literal["adamw", "sgd", "lars"] | None = None
    warmup_epochs: float = Field(default=0.0, ge=0, le=1e6)
    precision: Annotated[Literal["auto", "32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16"], BeforeValidator(_precision_text)] = (
        "auto"
    )
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = Field(default=1, ge=1)
    strategy: str = "auto"
    sync_batchnorm: bool = False
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
    num_workers: int = Field(default=0, ge=0, le=64)
    log_every_n_steps: int = Field(default=10, ge=1)
    checkpoint_every_n_steps: int | None = Field(default=None, ge=1)
    checkpoint_every_minutes: float = Field(default=10.0, ge=0)
    logger: Literal["csv", "tensorboard", "wandb", "mlflow"] = "csv"
    progress_every_n_steps: int = Field(default=50, ge=1)
    online_probe: bool = True
    progress_bar: bool = True
    channels_last: Literal["auto"] | bool = "auto"
    small_map_conv: Literal["auto"] | bool = "auto"
    compile: Literal["auto"] | bool = "auto"
    grad_checkpointing: bool = False
    backbone_chunk: Annotated[int, Field(ge=1)] | Literal["auto"] | None = "auto"
    activation_memory_mb: float = Field(default=768.0, gt=0)

    @field_validator("max_steps")
    @classmethod
    def _some_steps(cls, n: int) -> int:
        if n == 0:
            raise ValueError("-1 (no limit) or at least 1 step")
        return n


class PretrainConfig(StrictModel):
    """Everything ``ssl pretrain`` needs; ``task_config`` is validated by the task's own config model."""

    task: str = "rotation"
    data: DataConfig = Field(default_factory=DataConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    task_config: dict[str, Any] = Field(default_factory=dict)
    init_from: PathText | None = None  # library name, run folder or weights file to start the backbone from
    name: str | None = None  # the backbone's checkpoint-library name (None: <task>-<backbone>-<data>-<date>, made unique)

    @field_validator("init_from")
    @classmethod
    def _names_something(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("should name a library checkpoint, run folder or weights file, not be empty")
        return value


class ProbeConfig(StrictModel):
    """Settings of ``ssl probe``.

    Attributes:
        mode: Evaluator name.
        data: Labelled data to evaluate on.
        label_fraction: Share of training labels used (stratified, seeded).
        epochs: Training epochs (modes that train through the backbone).
        lr: Learning rate (``None`` = the evaluator's default).
        batch_size: Batch size.
        seed: Seed of label subsets, held-out splits and training.
        weight_decay: Weight decay of ``finetune``/``partial`` (``None`` = the evaluator's default).
        evaluator_config: The evaluator's own settings, validated by its ``Config`` model
            (``knn``: ``k``, ``temperature``; ``partial``: ``freeze_stages``, ``layer_decay``;
            ``finetune``: ``layer_decay``, ``augment``); see ``ssl probe --help``.
        precision: Lightning precision of the modes that train through the backbone.
        accelerator: Lightning accelerator (``cpu``, ``gpu``, ``auto``).
    """

    mode: str = "linear"
    data: DataConfig = Field(default_factory=DataConfig)
    label_fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    epochs: int | None = Field(default=None, ge=1, le=1_000_000)
    lr: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=256, ge=1)
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
    weight_decay: float | None = Field(default=None, ge=0)
    evaluator_config: dict[str, Any] = Field(default_factory=dict)
    precision: Annotated[Literal["32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16"], BeforeValidator(_precision_text)] = "32-true"
    accelerator: str = "auto"


M = TypeVar("M", bound=BaseModel)


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """Names of the fields valid at ``loc`` (for did-you-mean hints)."""
    cls: Any = model
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        cls = field.annotation
    return list(getattr(cls, "model_fields", {}))


def validate(model: type[M], data: dict[str, Any], what: str = "config") -> M:
    """Validate ``data`` against ``model``, turning pydantic errors into one-line :class:`UserError`."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            if "." in str(loc[-1]):  # the command line's dotted form, written as one key of a mapping
                head, _, rest = str(loc[-1]).partition(".")
                raise UserError(
                    f"{what}: unknown key '{key}' (keys are not dotted in a mapping: nest it, {{{head!r}: {{{rest!r}: ...}}}})"
                ) from None
            hint = did_you_mean(str(loc[-1]), _field_names(model, loc))
            if hint and len(loc) > 1:  # the key as it is written: trainer.epochs, not epochs
                hint = hint.replace(" '", f" '{'.'.join(str(p) for p in loc[:-1])}.", 1)
            raise UserError(f"{what}: unknown key '{key}'{hint}") from None
        msg = err["msg"].removeprefix("Value error, ")
        members = [err]
        if loc and _union_member(loc[-1]) and loc[-1] not in _field_names(model, loc):
            # a field of several types (bool | 'auto', int | None): pydantic names the member in
            # the location; the key is the field, and the message says what each member wanted
            loc = loc[:-1]
            key = ".".join(str(p) for p in loc)
            members = [x for x in e.errors() if tuple(x["loc"])[:-1] == loc and _union_member(x["loc"][-1])]
            msgs = list(dict.fromkeys(x["msg"].removeprefix("Value error, ").split(", unable to ")[0] for x in members))
            msg = msgs[0] + "".join(" or " + m.removeprefix("Input should be ") for m in msgs[1:])
        whole = err["type"] == "value_error" and isinstance(err.get("input"), dict)  # a check across fields
        given = err.get("input")
        got = "" if whole else " (got no value)" if given is None else f" (got {given!r})"
        words = [
            w for x in members if x["type"] == "literal_error" for w in re.findall(r"'([^']*)'", str(x.get("ctx", {}).get("expected", "")))
        ]
        words += ["true", "false"] if any(x["type"].startswith("bool") for x in members) and words else []
        if words and isinstance(given, str):  # one of a few words (or true/false besides them): the nearest
            got += did_you_mean(given, words)
        raise UserError(f"{what}: {key + ': ' if key else ''}{msg}{got}") from None


def _union_member(part: Any) -> bool:
    """Whether a location part is pydantic's tag of a union member (``bool``, ``literal['auto']``, ``constrained-int``)."""
    return isinstance(part, str) and (
        part in ("bool", "int", "float", "str", "none", "list", "dict") or "[" in part or part.startswith(("constrained-", "function-"))
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (the last would win silently).

    It also reads ``1e-3`` as a number, as YAML 1.2 does (PyYAML's YAML 1.1 wants a dot, ``1.0e-3``,
    and reads ``1e-3`` as text, which a model field turns back into a number but a value
    inside ``backbone.kwargs`` or a comparison with a saved config does not).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<' merges a mapping in; its keys are not this one's
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file is a :class:`UserError`."""
    if isinstance(path, str) and not path.strip():  # an unset shell variable in --config "$CFG"
        raise UserError("config file path is empty; give a YAML file")
    p = Path(path)
    if p.is_dir():
        raise UserError(f"config file {path} is a folder; give a YAML file")
    if not p.exists():  # a pipe (--config <(...)) or /dev/null is read as it is
        raise UserError(f"config file does not exist: {quoted_if_odd(str(path))}")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text") from None
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror or e}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise UserError(f"config file {path} is not valid YAML: {e.problem or e.context}{where}") from None
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:  # an empty file (or `null`): no settings
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping at the top level, not {type(data).__name__}")
    bad = _non_string_key(data)
    if bad is not None:
        raise UserError(f"config file {path}: key {bad} is not a name (keys are words such as trainer or epochs)")
    return data


def _non_string_key(data: dict[Any, Any], above: str = "") -> str | None:
    """The first key (with where it is) of a mapping, or a mapping inside it, that is not a string; else ``None``."""
    for key, value in data.items():
        if not isinstance(key, str):
            return f"{key!r}" + (f" in {above}" if above else "")
        if isinstance(value, dict):
            found = _non_string_key(value, f"{above}.{key}" if above else key)
            if found is not None:
                return found
    return None


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``key == "a.b"``, creating mappings on the way."""
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise UserError(f"cannot set {key}: '{p}' is {nxt!r} in the config, not a mapping")
        node = nxt
    node[parts[-1]] = value


def override_leaves(key: str, value: Any) -> list[tuple[str, Any]]:
    """The dotted keys a ``--set key=value`` sets: a non-empty mapping value sets each of its leaves.

    ``trainer={epochs: 4, lr: 0.1}`` sets ``trainer.epochs`` and ``trainer.lr`` and leaves the
    other ``trainer`` keys as they were; an empty mapping (``backbone.kwargs={}``) is a value.
    """
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in override_leaves(f"{key}.{k}", v)]
    return [(key, value)]


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``key=value`` strings (values parsed as YAML) to ``data`` in place; mapping values merge (:func:`override_leaves`)."""
    given: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not all(key.split(".")):
            raise UserError(f"--set {key}: a key has an empty part (two dots, or one at an end)")
        try:
            value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        for leaf, leaf_value in override_leaves(key, value):
            if leaf in given:
                raise UserError(f"--set {leaf} is given twice, as {given[leaf]!r} and as {raw!r}; give it once")
            given[leaf] = raw
            set_dotted(data, leaf, leaf_value)
    return data
