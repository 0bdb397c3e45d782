"""The pretext-task contract and its registry.

A pretext task is an ``nn.Module`` built from the backbone's feature dimension and its
own typed config. ``forward(backbone, images)`` turns a batch of normalised images into
the task's inputs and targets with batched tensor ops, runs them through the backbone
and the task's head, and returns ``(loss, logs)``. A new task is one file and one
decorator::

    @register_task("mytask")
    class MyTask(PretextTask):
        Config = MyTaskConfig
        ...
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ssl_toolkit.config import StrictModel
from ssl_toolkit.data.stage import WorkerStage
from ssl_toolkit.errors import UserError
from ssl_toolkit.registry import Registry

INPUTS_SECTION = "pretext/build_inputs"


def building_inputs() -> torch.profiler.record_function:
    """Profiler section around a task's input/target building (``benchmarks/throughput.py`` reads it)."""
    return torch.profiler.record_function(INPUTS_SECTION)


class TaskConfig(StrictModel):
    """Base of every task's config (unknown keys rejected)."""

    def unused_settings(self) -> list[str]:
        """Settings that take no effect under the others (e.g. small-view settings without small views), one line each."""
        return []


@dataclass(frozen=True)
class TaskInfo:
    """What ``ssl tasks`` shows about a task, and what it needs from the data.

    Attributes:
        description: One line.
        paper: Citation of the method.
        needs_colour: The task is meaningless on grayscale data.
        min_image_size: Smallest square image side the task accepts (``None`` = any).
    """

    description: str
    paper: str
    needs_colour: bool = False
    min_image_size: int | None = None


@dataclass
class DataFacts:
    """What a task may know about the data at build time (never the data itself)."""

    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = ""
    grayscale_origin: bool = False


class PretextTask(nn.Module, ABC):
    """Base class of pretext tasks.

    Args:
        feature_dim: Length of the backbone's pooled feature vector.
        config: The task's validated config.
        data: Facts about the data (channels, image size, normalisation).
    """

    Config: ClassVar[type[TaskConfig]] = TaskConfig
    info: ClassVar[TaskInfo]
    config: TaskConfig  # a task narrows it to its own Config type
    _mean: torch.Tensor  # (1, C, 1, 1) buffers
    _std: torch.Tensor
    default_lr: ClassVar[float] = 1e-3
    default_optimizer: ClassVar[str] = "adamw"
    default_weight_decay: ClassVar[float] = 1e-4

    def __init__(self, feature_dim: int, config: TaskConfig, data: DataFacts) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.config = config
        self.data = data
        self.register_buffer("_mean", torch.tensor(data.mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(data.std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images in [0, 1] -> normalised with the data's per-channel mean and std.

        This is what the backbone sees of whole images (the online probe uses it too); a task
        whose backbone sees a transform of the image (colorization: Lab lightness) overrides
        it together with :meth:`backbone_in_chans` and :meth:`backbone_input`.
        """
        return (x - self._mean) / self._std

    # The task's own random stream (two-view tasks draw their augmentations from it). The
    # engine seeds it once per process and saves/restores its state with every checkpoint,
    # so a resumed run continues the same views; tasks without one leave it ``None``.
    generator: torch.Generator | None = None

    def seed_views(self, seed: int, device: torch.device) -> None:
        """Seed :attr:`generator` on ``device``; a no-op for tasks that draw no random views."""

    @classmethod
    def check_data(cls, config: TaskConfig, data: DataFacts) -> None:
        """Raise :class:`~ssl_toolkit.errors.UserError` when the data cannot serve this task."""
        from ssl_toolkit.errors import UserError

        if cls.info.needs_colour and (data.channels < 3 or data.grayscale_origin):
            raise UserError(f"{cls.name} needs colour images; {data.name or 'this dataset'} is grayscale")
        need, subject, detail = cls.size_requirement(config)
        if need and data.image_size < need:
            raise UserError(
                f"{subject} needs images of at least {need} px{detail}; "
                f"{data.name or 'the data'} is {data.image_size} px (--image-size {need})"
            )

    @classmethod
    def notes(cls, config: TaskConfig, data: DataFacts, batch_size: int) -> list[str]:
        """Settings that take effect otherwise than written on this data and batch size, one line each.

        The launching process prints each as a ``note:``; nothing is changed.
        """
        return []

    @classmethod
    def size_requirement(cls, config: TaskConfig) -> tuple[int | None, str, str]:
        """``(smallest image side, who needs it, why)`` under ``config``; tasks whose minimum
        depends on their config (grid, gap) override it."""
        return cls.info.min_image_size, cls.name, ""

    name: ClassVar[str] = ""

    #: Geometry fields (gap, jitter, ...) and the smaller values tried, in order, when the
    #: images are too small for the defaults and the user did not set the field.
    geometry_fallbacks: ClassVar[dict[str, tuple[Any, ...]]] = {}

    @classmethod
    def fit_geometry(cls, config: TaskConfig, data: DataFacts, explicit: set[str]) -> tuple[TaskConfig, str | None]:
        """``config`` adapted to the image size through :attr:`geometry_fallbacks`, and a one-line note.

        Fields in ``explicit`` (set by the user) never change. The first combination of
        fallback values (each field's own value first) whose images fit is taken.

        Raises:
            UserError: When no combination fits, naming the smallest size one reaches.
        """
        from ssl_toolkit.errors import UserError

        need, subject, detail = cls.size_requirement(config)
        if not need or data.image_size >= need:
            return config, None
        current = config.model_dump()
        smallest: tuple[int, dict[str, Any]] | None = None
        for combo in cls._geometry_combos(config, explicit):
            candidate = type(config).model_validate({**current, **combo})
            fits, _, _ = cls.size_requirement(candidate)
            if not fits or data.image_size >= fits:
                changed = ", ".join(f"{k} {current[k]} -> {v}" for k, v in combo.items() if v != current[k])
                return (
                    candidate,
                    f"note: {cls.name} on {data.image_size} px images: {changed} (the defaults need {need} px); recorded in config.yaml",
                )
            if smallest is None or fits < smallest[0]:
                smallest = (fits, combo)
        if smallest is None or smallest[0] >= need:
            return config, None  # nothing to adapt: check_data names the size
        fits, combo = smallest
        changed = " and ".join(f"{k} {v}" for k, v in combo.items() if v != current[k])
        raise UserError(
            f"{subject} needs images of at least {need} px{detail}, or {fits} px with {changed}; "
            f"{data.name or 'the data'} is {data.image_size} px (--image-size {fits})"
        )

    @classmethod
    def _geometry_combos(cls, config: TaskConfig, explicit: set[str]) -> list[dict[str, Any]]:
        """Every combination of fallback values for the fields not in ``explicit``, in the order tried."""
        import itertools

        current = config.model_dump()
        options = {k: v for k, v in cls.geometry_fallbacks.items() if k not in explicit}
        return [dict(zip(options, combo)) for combo in itertools.product(*[(current[k], *v) for k, v in options.items()])]

    @classmethod
    def smallest_image_size(cls, config: TaskConfig) -> int | None:
        """Smallest image side :meth:`fit_geometry` can adapt ``config`` to when the user set no geometry (``None`` = any)."""
        current = config.model_dump()
        sizes = [
            cls.size_requirement(type(config).model_validate({**current, **combo}))[0] for combo in cls._geometry_combos(config, set())
        ]
        known = [s for s in sizes if s]
        return min(known) if known else None

    @abstractmethod
    def forward(self, backbone: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Compute the pretext loss of one batch.

        Args:
            backbone: The shared timm backbone (pooled output). Under
                ``trainer.backbone_chunk`` it is a :class:`~ssl_toolkit.chunked.ChunkedBackbone`:
                ``backbone(x)`` and ``backbone.forward_features(x)`` then run a chunk at a
                time, and every other attribute is the backbone's own.
            images: ``(B, C, H, W)`` float images in [0, 1] on the training device; the task
                normalises what it feeds the backbone (:meth:`normalize`).

        Returns:
            The scalar loss and a dict of scalar tensors to log (e.g. ``pretext_acc``). The
            dict may hold ``features``: ``(B, D)`` detached pooled features of the
            (un-rotated or first-view) images, which the online probe then reuses instead
            of running its own forward pass.
        """

    @classmethod
    def worker_stage(cls, config: TaskConfig, data: DataFacts) -> WorkerStage:
        """What the data workers hand over when images stream from files (:mod:`ssl_toolkit.data.stage`).

        Default: one centre square at the image size, the view in-memory sources hold, so the
        task's batched input building is the same for both. Two-view tasks ask for their
        random-resized crops instead, cut from the original photos.
        """
        need, _, _ = cls.size_requirement(config)
        return WorkerStage(min_size=need, colour=cls.info.needs_colour)

    @classmethod
    def backbone_in_chans(cls, config: TaskConfig, data: DataFacts) -> int:
        """Input channels of the backbone this task trains (default: the data's channels)."""
        return data.channels

    def backbone_input_size(self) -> int:
        """Side in px of what this task feeds the backbone (default: the image; tiles and patches are smaller)."""
        return self.data.image_size

    def backbone_input(self) -> dict[str, Any]:
        """How images become backbone input, recorded in the run's ``meta.json``.

        ``in_chans``, ``mean`` and ``std`` (of what the backbone sees), plus
        ``input_transform`` when the backbone sees a transform of the image (``"lab_l"``:
        Lab lightness ``L / 100``). Must agree with :meth:`normalize`.
        """
        return {"in_chans": self.data.channels, "mean": list(self.data.mean), "std": list(self.data.std)}

    def attach(self, backbone: nn.Module) -> None:
        """Called once with the run's backbone before training (e.g. to copy it into a momentum encoder)."""

    def fit_data_prior(self, images: torch.Tensor) -> None:
        """Called once before training with the ``(N, C, H, W)`` uint8 training images.

        Tasks that need statistics of the data (e.g. the colour prior of colorization)
        compute them here, in batches; the task never loads data itself.
        """

    def on_train_batch_end(self, backbone: nn.Module, step: int, total_steps: int) -> None:
        """Hook after each optimiser step (momentum updates of target networks)."""

    def save_samples(self, backbone: nn.Module, images: torch.Tensor, out_dir: Path, epoch: int) -> list[Path]:
        """Write visual samples of the task's output (e.g. colourised images) into ``out_dir``.

        Called on rank 0 at the end of every epoch with a fixed batch of training images
        (``(B, C, H, W)`` in [0, 1]); tasks without pictures write nothing.

        Returns:
            The files written.
        """
        return []

    def extra_state(self) -> dict[str, Any]:
        """JSON-able facts saved with the run (e.g. a permutation set)."""
        return {}


TASKS: Registry[type[PretextTask]] = Registry("task", package="ssl_toolkit.pretext", group="ssl_toolkit.tasks")


def register_task(name: str):
    """Class decorator registering a :class:`PretextTask` under ``name``."""

    def deco(cls: type[PretextTask]) -> type[PretextTask]:
        if not (isinstance(cls, type) and issubclass(cls, PretextTask)):
            raise UserError(f"register_task('{name}') needs a subclass of ssl_toolkit.pretext.PretextTask, not {cls!r}")
        cls.name = name
        return TASKS.register(name)(cls)

    return deco


INPUT_TRANSFORMS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry(
    "input transform", package="ssl_toolkit.pretext", group="ssl_toolkit.tasks"
)


def register_input_transform(name: str) -> Callable[[Callable[[torch.Tensor], torch.Tensor]], Callable[[torch.Tensor], torch.Tensor]]:
    """Decorator registering how a task's backbone sees an image other than as its pixels.

    The function maps ``(B, C, H, W)`` images in [0, 1] to ``(B, C', H, W)`` before
    normalisation. The task that defines it names it in :meth:`PretextTask.backbone_input`
    (``input_transform``), the name is recorded in ``meta.json``, and evaluators look the
    function up here by that name, so the contract lives in the task's own module.
    """
    return INPUT_TRANSFORMS.register(name)


def check_task_signature(name: str, cls: type[PretextTask]) -> None:
    """Refuse, in one line naming the task, a class that cannot be called as the toolkit builds a task.

    The toolkit calls ``cls(feature_dim, config, data)``; the arguments are matched
    against the signature of ``__init__`` only (nothing runs), so a ``TypeError`` raised
    inside ``__init__`` itself still shows its traceback.

    Args:
        name: The task's registered name.
        cls: Its class.

    Raises:
        UserError: The signature does not take those three arguments.
    """
    import inspect

    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # no signature to read: the call itself will tell
        return
    try:
        signature.bind(0, None, None)
    except TypeError as e:
        raise UserError(
            f"task '{name}' cannot be built: TypeError: {e}; the toolkit calls {cls.__name__}(feature_dim, config, data), "
            f"and its __init__ takes {signature}"
        ) from None


def build_task(name: str, feature_dim: int, task_config: dict[str, Any], data: DataFacts) -> PretextTask:
    """Validate ``task_config`` against the task's config model and build the task."""
    from ssl_toolkit.config import validate

    cls = TASKS.get(name)
    cfg = validate(cls.Config, task_config, what=f"task_config ({name})")
    cls.check_data(cfg, data)
    check_task_signature(name, cls)
    return cls(feature_dim, cfg, data)
