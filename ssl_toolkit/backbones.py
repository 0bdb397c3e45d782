"""timm backbones: creation, the small-image stem, and stage lists for partial freezing.

A backbone is ``timm.create_model(name, num_classes=0, in_chans=C, **kwargs)``, optionally
with its stem replaced by a 3x3 stride-1 conv and no max-pool (the CIFAR-style stem of
He et al., 2016, used by SimCLR for small images). Everything needed to rebuild it in
plain timm is kept in a :class:`BackboneSpec`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import timm
from torch import nn

from ssl_toolkit.config import BackboneConfig
from ssl_toolkit.errors import UserError, did_you_mean

SMALL_STEM_MAX_SIZE = 64


@dataclass
class BackboneSpec:
    """What rebuilds a backbone: the timm name, its create kwargs, and the stem change."""

    timm_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    small_stem: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneSpec:
        return cls(timm_name=d["timm_name"], kwargs=dict(d.get("kwargs", {})), small_stem=bool(d.get("small_stem")))


def supports_small_stem(model: nn.Module) -> bool:
    """Whether ``model`` has a ResNet-style ``conv1`` + ``maxpool`` stem."""
    return hasattr(model, "conv1") and hasattr(model, "maxpool")


def apply_small_stem(model: nn.Module) -> nn.Module:
    """Make a ResNet-style stem keep resolution: 3x3 stride-1 first conv, no max-pool.

    A single 7x7 stride-2 ``conv1`` becomes a fresh 3x3 stride-1 conv with the same
    channels; a deep stem (``conv1`` is a ``Sequential``, as in timm's ``resnet*d``/``*t``)
    keeps its convs with the first one's stride set to 1. The max-pool becomes ``Identity``.
    """
    conv1 = model.conv1
    if isinstance(conv1, nn.Conv2d):
        model.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, 1, 1, bias=conv1.bias is not None)
    else:
        first = next(m for m in conv1.modules() if isinstance(m, nn.Conv2d))
        first.stride = (1, 1)
    model.maxpool = nn.Identity()
    return model


def build_from_spec(spec: BackboneSpec) -> nn.Module:
    """Create the (randomly initialised) backbone that ``spec`` describes."""
    try:
        model = timm.create_model(spec.timm_name, pretrained=False, **spec.kwargs)
    except (RuntimeError, TypeError, ValueError) as e:
        raise UserError(f"cannot create backbone '{spec.timm_name}': {str(e).splitlines()[0]}") from None
    if spec.small_stem:
        apply_small_stem(model)
    return model


def create_backbone(cfg: BackboneConfig, in_chans: int, image_size: int) -> tuple[nn.Module, BackboneSpec]:
    """Create a timm backbone for ``in_chans``-channel images of ``image_size`` px.

    Returns:
        The model (pooled output of size :func:`feature_dim`) and its :class:`BackboneSpec`.
    """
    if not timm.is_model(cfg.name):
        names = timm.list_models()
        examples = ", ".join(n for n in ("resnet18", "resnet34", "resnet50", "resnet10t", "convnext_atto", "vit_tiny_patch16_224"))
        raise UserError(f"unknown backbone '{cfg.name}'{did_you_mean(cfg.name, names)}; any timm model name works, e.g. {examples}")
    kwargs = {**cfg.kwargs, "num_classes": 0, "in_chans": in_chans}
    probe = timm.create_model(cfg.name, pretrained=False, **kwargs) if cfg.small_stem is not False else None
    small = cfg.small_stem
    if small is None:
        small = image_size <= SMALL_STEM_MAX_SIZE and probe is not None and supports_small_stem(probe)
    elif small and not supports_small_stem(probe):
        raise UserError(f"backbone '{cfg.name}' has no ResNet-style stem; --set backbone.small_stem=false")
    spec = BackboneSpec(cfg.name, kwargs, bool(small))
    return build_from_spec(spec), spec


def feature_dim(model: nn.Module) -> int:
    """Length of the pooled feature vector."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


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

    A stage is a ``feature_info`` module that holds weights (a ResNet's ``act1`` entry
    marks the end of the stem and has none). The stem is every top-level module and
    parameter that comes before the first stage, so a small-image stem (3x3 ``conv1``,
    ``maxpool`` replaced by ``Identity``) is covered as it stands. Modules after the last
    stage (final norm, pooling) belong to no stage and are always trained.

    Returns:
        ``[stem, stage_1, ..., stage_N]``.

    Raises:
        UserError: When the model has no usable ``feature_info``.
    """
    info = getattr(model, "feature_info", None)
    entries = list(info) if info is not None else []
    modules = dict(model.named_modules())
    names = [e["module"] for e in entries if isinstance(e, dict) and e.get("module") in modules]
    stage_names = [n for n in names if any(True for _ in modules[n].parameters())]
    if not stage_names:
        raise UserError(f"backbone {type(model).__name__} has no timm feature_info stages to freeze")
    first_top = stage_names[0].split(".")[0]
    stem: list[str] = []
    for name, _ in model.named_children():
        if name == first_top:
            break
        stem.append(name)
    stem += [n for n, _ in model.named_parameters(recurse=False)]
    return [Stage("stem", stem)] + [Stage(n, [n]) for n in stage_names]
