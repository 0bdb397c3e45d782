"""Checking what a data source hands over: the arrays and labels every command relies on.

A plugin's source builds its :class:`~ssl_toolkit.data.base.DataSource` itself. Float pixels
would be normalised as if they were bytes, a non-square or three-dimensional array would fail
deep inside a convolution, and a label past the class list inside scikit-learn; each is
refused here, in one line naming the source, before any statistic is computed.
"""

from __future__ import annotations

from typing import Any

import torch

from ssl_toolkit.errors import UserError


def _shape(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} {tuple(t.shape)}"


def check_split(source: str, which: str, split: Any, classes: list[str] | None) -> None:
    """Refuse an in-memory split whose images are not uint8 ``(N, C, S, S)`` or whose labels do not fit ``classes``.

    Streamed splits (files, shards) are built by the toolkit and decode to that layout; they pass.

    Raises:
        UserError: naming ``source``, the split and what is wrong.
    """
    if getattr(split, "streaming", False):
        return
    where = f"data source '{source}': {which}"
    images = getattr(split, "images", None)
    if not isinstance(images, torch.Tensor):
        raise UserError(f"{where} images must be a torch.Tensor, not {type(images).__name__}")
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[2] != images.shape[3]:
        raise UserError(f"{where} images must be uint8 (N, C, S, S) with C 1 or 3 (square images), not {_shape(images)}")
    n = images.shape[0]
    if len(split.ids) != n:
        raise UserError(f"{where} has {len(split.ids)} ids for {n} images")
    labels = split.labels
    if labels is None:
        return
    if not isinstance(labels, torch.Tensor) or labels.shape[:1] != (n,):
        got = _shape(labels) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise UserError(f"{where} labels must be a tensor with one row per image ({n}), not {got}")
    k = len(classes or [])
    if labels.dim() == 1:
        if labels.dtype != torch.int64:
            raise UserError(f"{where} labels must be int64 class indices (N,), not {_shape(labels)}")
        if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise UserError(f"{where} labels run from {int(labels.min())} to {int(labels.max())}; the {k} classes take 0 to {k - 1}")
    elif labels.dim() == 2:
        if labels.dtype != torch.uint8 or labels.shape[1] != k or (n and int(labels.max()) > 1):
            raise UserError(f"{where} multi-hot labels must be uint8 0/1 rows (N, {k}) for the {k} classes, not {_shape(labels)}")
    else:
        raise UserError(f"{where} labels must be (N,) class indices or (N, K) multi-hot rows, not {_shape(labels)}")


def check_source(name: str, train: Any, test: Any, classes: list[str] | None) -> None:
    """Both splits (:func:`check_split`), and test images of the training images' channels and size."""
    check_split(name, "train", train, classes)
    check_split(name, "test", test, classes)
    if len(test) and not getattr(train, "streaming", False) and len(train):
        a, b = train.images.shape[1:], test.images.shape[1:]
        if a != b:
            raise UserError(f"data source '{name}': test images are {tuple(b)}, training images {tuple(a)} (C, S, S)")
