"""The schema of a backbone's ``meta.json``, checked on every read.

A ``meta.json`` edited by hand or written by another version may hold a field of the
wrong type (``probes`` as a list, ``image_size: "abc"``). Reading it through
:func:`check_meta` turns that into one line naming the field, instead of a crash deep in
a command; ``ssl checkpoints list`` shows such an entry as unreadable and lists the rest.
Fields the schema does not name are kept as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator, model_validator

from ssl_toolkit.config import ColorSpace, Equalize, Normalize
from ssl_toolkit.errors import UserError


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=(), allow_inf_nan=False)


class BackboneMetaSpec(_Open):
    """``backbone``: what rebuilds the model in plain timm."""

    timm_name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    # strict: the model is rebuilt from the raw values, where "false" or "no" would count as true
    small_stem: StrictBool | None = None
    stem_pool: StrictBool | None = None


class ProbeSummary(_Open):
    """One entry of ``probes``."""

    mode: str | None = None
    label_fraction: float | None = None
    top1: float | None = None
    top5: float | None = None
    dataset: str | None = None


class DatasetFacts(_Open):
    name: str | None = None
    classes: list[str] | None = None
    num_classes: int | None = Field(default=None, ge=0)


class ProcessingMeta(BaseModel):
    """``processing``: how the backbone's input pixels were prepared (``data.color_space``, ``equalize``, ``normalize``)."""

    model_config = ConfigDict(extra="forbid")

    color_space: ColorSpace = "rgb"
    equalize: Equalize = "none"
    normalize: Normalize = "zscore"


class BackboneMeta(_Open):
    """A backbone's metadata (the fields commands rely on; others pass through)."""

    backbone: BackboneMetaSpec
    task: str | None = None
    image_size: StrictInt | None = Field(default=None, ge=1, le=1024)  # data.image_size's range
    in_chans: StrictInt | None = Field(default=None, ge=1)
    mean: list[float] | None = None
    std: list[Annotated[float, Field(gt=0)]] | None = None
    epochs: int | None = Field(default=None, ge=0)
    steps: int | None = Field(default=None, ge=0)
    dataset: DatasetFacts | None = None
    processing: ProcessingMeta | None = None
    probes: dict[str, ProbeSummary] = Field(default_factory=dict)
    created: str | None = None
    weights_file: str | None = None
    weights_sha256: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")
    weights_bytes: int | None = Field(default=None, ge=0)
    library_name: str | None = None
    run_dir: str | None = None

    @field_validator("weights_file")
    @classmethod
    def _beside_the_metadata(cls, name: str | None) -> str | None:
        if name is not None and (not name or Path(name).name != name or name in (".", "..")):
            raise ValueError("a file name beside meta.json, without folders")
        return name

    @model_validator(mode="after")
    def _channels_agree(self) -> BackboneMeta:
        built = self.backbone.kwargs.get("in_chans")
        if self.in_chans is not None and isinstance(built, int) and built != self.in_chans:
            raise ValueError(f"in_chans is {self.in_chans} but the backbone is built with in_chans={built}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if self.in_chans is not None and values is not None and len(values) != self.in_chans:
                raise ValueError(f"{key} has {len(values)} values for in_chans={self.in_chans}")
        return self


def check_meta(meta: Any, where: str) -> dict[str, Any]:
    """``meta`` if it matches :class:`BackboneMeta`, else a one-line :class:`UserError` naming the field."""
    if not isinstance(meta, dict):
        raise UserError(f"{where} is not backbone metadata (not a JSON object)")
    try:
        BackboneMeta.model_validate(meta)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if not err["loc"] and err["type"] == "value_error":  # a check across fields
            raise UserError(f"{where} is not valid backbone metadata: {err['msg'].removeprefix('Value error, ')}") from None
        if key == "backbone" and err["type"] == "missing":
            raise UserError(f"{where} is not backbone metadata (no backbone.timm_name)") from None
        raise UserError(
            f"{where} is not valid backbone metadata: {key}: {err['msg'].removeprefix('Value error, ')} (got {err.get('input')!r:.60})"
        ) from None
    return meta
