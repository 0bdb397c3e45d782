"""timm backbones: creation, the small-image stem per family, and stage lists for partial freezing.

A backbone is ``timm.create_model(name, num_classes=0, in_chans=C, **kwargs)``. Three
families are known by the timm module that defines them, each with its small-image rule
(on by default at ``SMALL_STEM_MAX_SIZE`` = 64 px and less; a ResNet trained on a CPU: at 16
px and less, :func:`resnet_small_max_size`):

- ResNet: the stem is replaced by a 3x3 stride-1 conv and no max-pool (the CIFAR-style
  stem of He et al., 2016, used by SimCLR for small images); total stride 32 -> 8. A ResNet
  that keeps timm's stem (on a CPU above 16 px) loses the stem's max-pool at
  ``STEM_POOL_MAX_SIZE`` (32) px and less: total stride 32 -> 16.
- ConvNeXt (Liu et al., 2022): the 4x4 stride-4 "patchify" stem becomes 1x1 stride 1
  (timm's ``patch_size=1``); total stride 32 -> 8, as for the ResNet.
- ViT (Dosovitskiy et al., 2021): ``patch_size=4`` instead of 16, so a 32 px image is an
  8x8 grid of tokens instead of 2x2. Every ViT is created with ``img_size`` set to the
  image size and timm's ``dynamic_img_size``/``dynamic_img_pad``, so it accepts any input
  side (tiles and patches of the patch-based tasks; sides that are not a multiple of
  the patch size are padded).

ConvNeXt and ViT rules are timm keyword arguments, so plain timm rebuilds them from the
kwargs alone; only the ResNet rule changes modules after creation. Everything needed to
rebuild a backbone is kept in a :class:`BackboneSpec`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, cast

import timm
import torch
from torch import nn

from ssl_toolkit.config import BackboneConfig
from ssl_toolkit.errors import UserError, did_you_mean

SMALL_STEM_MAX_SIZE = 64
# A ResNet trained on a CPU takes timm's stem above 16 px: the small stem's 16x compute
# (resnet18 at 28 px: 0.74 of an epoch of Fashion-MNIST in 15 minutes) costs more than its
# resolution gains within a CPU's budget, and timm's stem, which pads, still leaves a 28-32 px
# image a 7x7-8x8 map. ConvNeXt and ViT keep 64 px everywhere: without the rule a ConvNeXt's
# stride-32 stages need 32 px of input, and a ViT's 16 px patches leave a 1-4 token grid.
SMALL_STEM_MAX_SIZE_CPU_RESNET = 16
SMALL_VIT_PATCH = 4  # ViT patch side under the small-image rule
# A ResNet with timm's stem drops the stem's max-pool at 32 px and less: at 28 px timm's stem
# leaves layer1 a 7x7 map and the last stage 1x1; without the pool they see 14x14 and 2x2, for
# about 4x the stages' compute (the small stem costs 16x). A new user's Fashion-MNIST SimCLR run,
# 15 minutes of a 2-core CPU in bf16: 86.6% linear with the pool (1,246 steps), 87.6% without it
# (669 steps; docs/benchmarks.md, "A new user's SimCLR run").
STEM_POOL_MAX_SIZE = 32
# backbone.name "auto": resnet18, except where a ResNet trained on a CPU keeps timm's stem
# without its max-pool (17-32 px). There timm's resnet10t (one basic block per stage, a 3x3
# three-conv stem, 4.9M parameters against resnet18's 11.2M) made 1.7x the steps of a new
# user's 15-minute Fashion-MNIST SimCLR run on a 2-core CPU, for 88.7% linear top-1 against
# resnet18's 87.4-87.6% (docs/benchmarks.md, "The backbone for a CPU budget").
AUTO_BACKBONE = "auto"
DEFAULT_BACKBONE = "resnet18"
SMALL_IMAGE_CPU_BACKBONE = "resnet10t"
FAMILY_MODULES = {"resnet": "resnet", "convnext": "convnext", "vit": "vision_transformer"}


def family_of(timm_name: str) -> str:
    """``resnet``, ``convnext``, ``vit`` or ``other``: the timm module that defines ``timm_name``."""
    module = timm.models.model_entrypoint(timm_name).__module__.rsplit(".", 1)[-1]
    return next((f for f, m in FAMILY_MODULES.items() if m == module), "other")


def resnet_small_max_size(accelerator: str) -> int:
    """The largest image side at which a ResNet gets the small stem by default.

    ``SMALL_STEM_MAX_SIZE`` (64 px) where Lightning's ``accelerator`` setting trains on a
    GPU, ``SMALL_STEM_MAX_SIZE_CPU_RESNET`` (16 px) on a CPU: the small stem multiplies a
    ResNet's compute by 16, which a GPU affords and a CPU's budget does not.
    """
    from ssl_toolkit.precision import uses_gpu

    return SMALL_STEM_MAX_SIZE if uses_gpu(accelerator) else SMALL_STEM_MAX_SIZE_CPU_RESNET


def auto_backbone(image_size: int, accelerator: str) -> str:
    """The timm name that ``backbone.name: auto`` builds for ``image_size`` px on ``accelerator``.

    ``SMALL_IMAGE_CPU_BACKBONE`` (resnet10t) where a ResNet trained on a CPU keeps timm's
    stem without its max-pool (above ``SMALL_STEM_MAX_SIZE_CPU_RESNET``, at most
    ``STEM_POOL_MAX_SIZE`` px); ``DEFAULT_BACKBONE`` (resnet18) everywhere else. A run records
    the name it chose, so a resume on other hardware rebuilds the same network.
    """
    cpu_band = resnet_small_max_size(accelerator) < image_size <= STEM_POOL_MAX_SIZE
    return SMALL_IMAGE_CPU_BACKBONE if cpu_band else DEFAULT_BACKBONE


def resolve_auto(cfg: BackboneConfig, image_size: int, accelerator: str) -> BackboneConfig:
    """``cfg`` with ``name: auto`` replaced by :func:`auto_backbone`'s choice (unchanged otherwise)."""
    if cfg.name != AUTO_BACKBONE:
        return cfg
    return cfg.model_copy(update={"name": auto_backbone(image_size, accelerator)})


def chosen_small_stem(spec: BackboneSpec, image_size: int) -> bool:
    """What ``small_stem=None`` chose for the backbone ``spec`` describes.

    A run records it in its resolved config, so that a resume on other hardware (where
    :func:`resnet_small_max_size` differs) rebuilds the same backbone.
    """
    if family_of(spec.timm_name) in ("convnext", "vit"):
        return image_size <= SMALL_STEM_MAX_SIZE
    return spec.small_stem  # ResNet: whether the stem was replaced; other families have no rule


def family_kwargs(
    timm_name: str, kwargs: dict[str, Any], image_size: int, small: bool | None, resnet_max: int = SMALL_STEM_MAX_SIZE
) -> tuple[dict[str, Any], bool]:
    """The create kwargs of the ConvNeXt/ViT rules and whether the ResNet stem surgery applies.

    Kwargs the user gave explicitly are never changed (``patch_size``, ``img_size``, ...).
    ``small=None`` turns the rule on at ``SMALL_STEM_MAX_SIZE`` px and less (a ResNet: at
    ``resnet_max`` px and less).

    Raises:
        UserError: ``small`` is ``True`` for a family without a small-image rule.
    """
    fam = family_of(timm_name)
    auto = image_size <= (resnet_max if fam == "resnet" else SMALL_STEM_MAX_SIZE)
    use_small = auto if small is None else small
    out = dict(kwargs)
    if fam == "vit":
        out = {"img_size": image_size, "dynamic_img_size": True, "dynamic_img_pad": True, **out}
        if use_small:
            out.setdefault("patch_size", SMALL_VIT_PATCH)
        return out, False
    if fam == "convnext":
        if use_small:
            out.setdefault("patch_size", 1)
        return out, False
    if small and fam != "resnet":
        raise UserError(
            f"backbone '{timm_name}' has no small-image stem rule (ResNet, ConvNeXt and ViT have one); --set backbone.small_stem=false"
        )
    return out, bool(use_small) and fam == "resnet"


class TimmModel(Protocol):
    """What the toolkit uses of a timm model beyond ``nn.Module``.

    A static view only: ``typing.cast(TimmModel, backbone)`` where a timm attribute is read
    (``nn.Module`` types unknown attributes as ``Tensor | Module``); nothing is checked.

    Attributes:
        num_features: Channels of the last feature map (the pooled width, unless the model
            has a ``head_hidden_size``).
    """

    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The unpooled last feature map (or tokens) of ``x``."""
        ...

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of a :meth:`forward_features` output (what ``model(x)`` returns)."""
        ...


@dataclass
class BackboneSpec:
    """What rebuilds a backbone: the timm name, its create kwargs, and the stem changes.

    Attributes:
        small_stem: A ResNet's stem was replaced (:func:`apply_small_stem`; no max-pool).
        stem_pool: ``False`` when the ResNet's max-pool is gone (the small stem, or timm's
            stem without it); ``True`` otherwise, also for families without one.
    """

    timm_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    small_stem: bool = False
    stem_pool: bool = True

    def __post_init__(self) -> None:
        if self.small_stem:
            self.stem_pool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneSpec:
        small = bool(d.get("small_stem"))
        pool = d.get("stem_pool")  # metadata from before stem_pool: the pool went with the small stem only
        return cls(
            timm_name=d["timm_name"],
            kwargs=dict(d.get("kwargs", {})),
            small_stem=small,
            stem_pool=not small if pool is None else bool(pool),
        )


def supports_small_stem(model: nn.Module) -> bool:
    """Whether ``model`` has a ResNet-style ``conv1`` + ``maxpool`` stem."""
    return hasattr(model, "conv1") and hasattr(model, "maxpool")


def apply_small_stem(model: nn.Module) -> nn.Module:
    """Make a ResNet-style stem keep resolution: 3x3 stride-1 first conv, no max-pool.

    A single 7x7 stride-2 ``conv1`` becomes a fresh 3x3 stride-1 conv with the same
    channels; a deep stem (``conv1`` is a ``Sequential``, as in timm's ``resnet*d``/``*t``)
    keeps its convs with the first one's stride set to 1. The max-pool becomes ``Identity``.
    """
    conv1 = model.get_submodule("conv1")
    if isinstance(conv1, nn.Conv2d):
        model.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, 1, 1, bias=conv1.bias is not None)
    else:
        first = next(m for m in conv1.modules() if isinstance(m, nn.Conv2d))
        first.stride = (1, 1)
    model.maxpool = nn.Identity()
    return model


def _create(name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError) as e:
        raise UserError(f"cannot create backbone '{name}': {str(e).splitlines()[0]}") from None


def build_from_spec(spec: BackboneSpec) -> nn.Module:
    """Create the (randomly initialised) backbone that ``spec`` describes."""
    model = _create(spec.timm_name, spec.kwargs)
    if spec.small_stem:
        apply_small_stem(model)
    elif not spec.stem_pool:
        if not supports_small_stem(model):
            raise UserError(f"backbone '{spec.timm_name}' has no ResNet-style stem max-pool; --set backbone.stem_pool=true")
        model.maxpool = nn.Identity()  # timm's stem without its max-pool: total stride 32 -> 16
    return model


def create_backbone(
    cfg: BackboneConfig, in_chans: int, image_size: int, resnet_max: int = SMALL_STEM_MAX_SIZE, pool_max: int = STEM_POOL_MAX_SIZE
) -> tuple[nn.Module, BackboneSpec]:
    """Create a timm backbone for ``in_chans``-channel images of ``image_size`` px.

    The family's small-image rule (module docstring) applies at ``SMALL_STEM_MAX_SIZE`` px
    and less (a ResNet: ``resnet_max``; runs pass :func:`resnet_small_max_size` of their
    accelerator) unless ``cfg.small_stem`` says otherwise. A ResNet keeping timm's stem
    drops its max-pool at ``pool_max`` px and less unless ``cfg.stem_pool`` says otherwise
    (a resumed run from before that rule passes 0).

    Returns:
        The model (pooled output of size :func:`feature_dim`) and its :class:`BackboneSpec`.
    """
    if cfg.name == AUTO_BACKBONE:
        raise ValueError("backbone.name 'auto' is resolved by resolve_auto before create_backbone")
    if not timm.is_model(cfg.name):
        names = timm.list_models()
        examples = ", ".join(n for n in ("resnet18", "resnet34", "resnet50", "resnet10t", "convnext_atto", "vit_tiny_patch16_224"))
        raise UserError(f"unknown backbone '{cfg.name}'{did_you_mean(cfg.name, names)}; any timm model name works, e.g. {examples}")
    fam = family_of(cfg.name)
    if cfg.stem_pool is not None and fam != "resnet":  # true would be recorded, and read, as a choice that was made
        raise UserError(f"backbone '{cfg.name}' has no ResNet-style stem max-pool; leave backbone.stem_pool unset")
    # stem_pool=true asks for timm's stem with its max-pool, so the small-stem rule does not apply
    small_choice = False if cfg.stem_pool and cfg.small_stem is None and fam == "resnet" else cfg.small_stem
    kwargs, small = family_kwargs(cfg.name, {**cfg.kwargs, "num_classes": 0, "in_chans": in_chans}, image_size, small_choice, resnet_max)
    if small:  # a timm ResNet-family name whose model may still lack the conv1 + maxpool stem
        probe = _create(cfg.name, kwargs)
        if not supports_small_stem(probe):
            if cfg.small_stem:
                raise UserError(f"backbone '{cfg.name}' has no ResNet-style stem; --set backbone.small_stem=false")
            small = False
    pool = (image_size > pool_max or fam != "resnet") if cfg.stem_pool is None else cfg.stem_pool
    spec = BackboneSpec(cfg.name, kwargs, small, stem_pool=pool)
    model = build_from_spec(spec)
    check_input_size(model, cfg.name, in_chans, image_size)
    return model, spec


def check_input_size(model: nn.Module, name: str, in_chans: int, image_size: int) -> None:
    """Refuse, in one line, a backbone that cannot take ``(in_chans, image_size, image_size)`` inputs.

    One image goes through it in eval mode: a ConvNeXt keeping timm's stride-32 stages fails
    below 32 px, a ViT keeping its fixed 224 px grid at any other size, and that failure is
    a traceback deep in timm when training starts.
    """
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, image_size, image_size))  # (1, C, S, S)
    except (RuntimeError, AssertionError, ValueError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(
            f"backbone '{name}' cannot take {image_size} px images ({why}); give a larger --image-size, or leave backbone.small_stem unset"
        ) from None
    finally:
        model.train(was)


def feature_dim(model: nn.Module) -> int:
    """Length of the pooled feature vector."""
    return int(getattr(model, "head_hidden_size", None) or cast(TimmModel, model).num_features)


@dataclass
class Stage:
    """A group of backbone weights frozen together by the ``partial`` evaluator.

    Attributes:
        name: ``stem`` or the stage's module name (``layer1``, ``stages.0``, ``blocks.3``).
        prefixes: Qualified names of the modules and top-level parameters it holds; a
            parameter or buffer ``n`` belongs to it when ``n == p`` or ``n.startswith(p + ".")``.
    """

    name: str
    prefixes: list[str]

    def owns(self, qualified_name: str) -> bool:
        """Whether the parameter/buffer/module ``qualified_name`` lies in this stage."""
        return any(qualified_name == p or qualified_name.startswith(p + ".") for p in self.prefixes)


def stages(model: nn.Module) -> list[Stage]:
    """The stem followed by the backbone's stages, in forward order, from timm's ``feature_info``.

    The ``feature_info`` modules that hold weights mark where the stages end. A first entry
    that is a top-level module (a ResNet's ``act1``, a MobileNetV3's ``bn1``, a RegNet's
    ``stem``) marks the end of the stem instead. Each stage is every block from the end of
    the one before up to its mark, so blocks between two marks (an EfficientNet's
    ``blocks.3`` before ``blocks.4``) belong to the later stage. The stem is every top-level
    module and parameter before the first stage, so a small-image stem (3x3 ``conv1``,
    ``maxpool`` replaced by ``Identity``) is covered as it stands. Modules after the last
    stage (final convolution, norm, pooling) belong to no stage and are always trained.

    Returns:
        ``[stem, stage_1, ..., stage_N]``; a stage of several blocks is named ``first..last``.

    Raises:
        UserError: When the model has no usable ``feature_info``.
    """
    info = getattr(model, "feature_info", None)
    entries = list(info) if info is not None else []
    modules = dict(model.named_modules())
    names = [e["module"] for e in entries if isinstance(e, dict) and e.get("module") in modules]
    if len(names) > 1 and "." not in names[0]:
        names = names[1:]  # the stem's own end (ResNet's act1, MobileNetV3's bn1, RegNet's stem), not a stage
    marks = [n for n in names if any(True for _ in modules[n].parameters())]
    if not marks:
        raise UserError(f"backbone {type(model).__name__} has no timm feature_info stages to freeze")
    # the blocks in forward order: top-level modules, those that hold stages opened one level
    units: list[str] = []
    for top, child in model.named_children():
        if any(m.startswith(top + ".") for m in marks):
            units += [f"{top}.{n}" for n, _ in child.named_children()]
        else:
            units.append(top)

    def unit_of(mark: str) -> int:
        return next(i for i, u in enumerate(units) if mark == u or mark.startswith(u + "."))

    start = unit_of(marks[0])
    result = [Stage("stem", units[:start] + [n for n, _ in model.named_parameters(recurse=False)])]
    for mark in marks:
        end = unit_of(mark) + 1
        if end > start:
            part = units[start:end]
            result.append(Stage(part[0] if len(part) == 1 else f"{part[0]}..{part[-1]}", part))
            start = end
    return result
