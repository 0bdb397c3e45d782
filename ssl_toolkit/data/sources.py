"""Data sources: a registry of named datasets plus image folders.

Every source yields a :class:`DataSource`: square ``uint8`` image tensors of shape
``(N, C, S, S)`` for a train and a test split, integer labels when known, the class
names, and per-channel normalisation statistics computed from the training split.
Sources know nothing about pretext tasks or models.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ssl_toolkit.config import DataConfig
from ssl_toolkit.errors import UserError
from ssl_toolkit.registry import Registry


@dataclass
class Split:
    """One split of a data source.

    Attributes:
        images: ``(N, C, S, S)`` uint8 tensor.
        labels: ``(N,)`` int64 tensor, or ``None`` for unlabelled data.
        ids: One identifier per image (file path or ``name:index``).
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    ids: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: torch.Tensor) -> Split:
        """Return the images at ``index`` (a 1-D long tensor) as a new split."""
        labels = None if self.labels is None else self.labels[index]
        return Split(self.images[index], labels, [self.ids[i] for i in index.tolist()])


@dataclass
class DataSource:
    """A dataset made of a train and a test split of equally sized square images."""

    name: str
    train: Split
    test: Split
    classes: list[str] | None
    grayscale_origin: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.mean:
            self.mean, self.std = channel_stats(self.train.images)

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])

    @property
    def labelled(self) -> bool:
        return self.train.labels is not None

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else 0

    def describe(self) -> dict:
        """A JSON-able summary: name, channels, image size, classes, split sizes, statistics."""
        return {
            "name": self.name,
            "channels": self.channels,
            "image_size": self.image_size,
            "classes": self.classes,
            "num_classes": self.num_classes,
            "n_train": len(self.train),
            "n_test": len(self.test),
            "mean": list(self.mean),
            "std": list(self.std),
        }


SourceFactory = Callable[[DataConfig], DataSource]
SOURCES: Registry[SourceFactory] = Registry("dataset")


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``(N, C, H, W)`` uint8 images, on the [0, 1] scale."""
    x = images.float().div_(255.0).transpose(0, 1).reshape(images.shape[1], -1)  # (C, N*H*W)
    mean = x.mean(dim=1)
    std = x.std(dim=1).clamp_min(1e-3)
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` uint8 images to ``size`` x ``size`` (bilinear, antialiased)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = []
    for chunk in images.split(4096):  # bounded memory for large sets
        x = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of indices; each class keeps ``round(n * test_fraction)`` for test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_source(cfg: DataConfig) -> DataSource:
    """Build the data source named by ``cfg.name``: a registered dataset or a folder path."""
    if cfg.name in SOURCES:
        source = SOURCES.get(cfg.name)(cfg)
    else:
        path = Path(cfg.name).expanduser()
        if not path.exists():
            if os.sep not in cfg.name and not cfg.name.startswith("."):
                SOURCES.get(cfg.name)  # raises the unknown-dataset error listing valid names
            raise UserError(f"data path does not exist: {cfg.name}")
        from ssl_toolkit.data.folder import load_folder

        source = load_folder(path, cfg)
    if cfg.limit is not None and cfg.limit < len(source.train):
        g = torch.Generator().manual_seed(cfg.split_seed)
        source.train = source.train.subset(torch.randperm(len(source.train), generator=g)[: cfg.limit].sort().values)
        source.mean, source.std = channel_stats(source.train.images)
    return source


# ---------------------------------------------------------------------------------------
# digits: scikit-learn's 8x8 handwritten digits (1,797 images)
# ---------------------------------------------------------------------------------------
@SOURCES.register("digits")
def digits(cfg: DataConfig) -> DataSource:
    """scikit-learn's 8x8 handwritten digits, upsampled to ``image_size`` (default 32)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)  # (N, 1, 8, 8)
    x = resize_uint8(x, cfg.image_size or 32)
    y = d.target.astype(np.int64)
    tr, te = stratified_split(y, cfg.test_fraction, cfg.split_seed)
    ids = [f"digits:{i}" for i in range(len(y))]
    yt = torch.from_numpy(y)
    return DataSource(
        name="digits",
        train=Split(x[tr], yt[tr], [ids[i] for i in tr]),
        test=Split(x[te], yt[te], [ids[i] for i in te]),
        classes=[str(c) for c in range(10)],
        grayscale_origin=True,
    )


# ---------------------------------------------------------------------------------------
# fashion-mnist: IDX files read directly
# ---------------------------------------------------------------------------------------
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as e:
        raise UserError(f"cannot read IDX file {path}: {e}") from None


def find_fashion_mnist(explicit: str | None = None) -> Path:
    """Locate the Fashion-MNIST IDX files: ``explicit``, ``$SSL_TOOLKIT_DATA/fashion-mnist``, then Debian's path."""
    candidates = []
    if explicit:
        candidates.append(Path(explicit))
    if os.environ.get("SSL_TOOLKIT_DATA"):
        candidates.append(Path(os.environ["SSL_TOOLKIT_DATA"]) / "fashion-mnist")
    candidates.append(Path("/usr/share/datasets/fashion-mnist"))
    for c in candidates:
        if _idx_path(c, FASHION_FILES["train_images"]) is not None:
            return c
    raise UserError(
        "fashion-mnist not found in " + ", ".join(str(c) for c in candidates)
        + "; install the Debian package dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)"
    )


def _idx_path(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        hits = list(folder.rglob(name)) if folder.is_dir() else []
        if hits:
            return sorted(hits)[0]
    return None


@SOURCES.register("fashion-mnist")
def fashion_mnist(cfg: DataConfig) -> DataSource:
    """Fashion-MNIST (Xiao et al., 2017): 60,000 + 10,000 grayscale 28x28 images, 10 classes."""
    root = find_fashion_mnist(cfg.path)
    arrays = {}
    for key, stem in FASHION_FILES.items():
        p = _idx_path(root, stem)
        if p is None:
            raise UserError(f"fashion-mnist file {stem}(.gz) missing under {root}")
        arrays[key] = read_idx(p)
    size = cfg.image_size or 28
    splits = {}
    for split in ("train", "test"):
        x = resize_uint8(torch.from_numpy(arrays[f"{split}_images"].copy()).unsqueeze(1), size)
        y = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
        splits[split] = Split(x, y, [f"fashion-mnist:{split}:{i}" for i in range(len(y))])
    return DataSource("fashion-mnist", splits["train"], splits["test"], list(FASHION_CLASSES), grayscale_origin=True)


# ---------------------------------------------------------------------------------------
# synthetic: procedural colour shapes, deterministic by seed
# ---------------------------------------------------------------------------------------
SYNTHETIC_CLASSES = ["disk", "square", "triangle", "cross", "ring", "ell"]


def make_synthetic(n: int, size: int, seed: int, num_classes: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` labelled colour images of ``size`` px; the class is the shape kind.

    Each image has a vertical-gradient background with texture noise in a random colour,
    one shape of a random colour, size and position, and a darker drop shadow below-right
    of it (so the images have a canonical "up", which rotation prediction can learn).

    Returns:
        ``(n, 3, size, size)`` uint8 images and ``(n,)`` int64 labels.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=g)]
    r = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")  # (S, S)
    yy, xx = yy.expand(n, size, size), xx.expand(n, size, size)
    # background: colour with a vertical light gradient and noise texture
    bg = r(n, 3, 1, 1) * 0.6
    light = (1.0 - 0.35 * yy).unsqueeze(1)  # (n, 1, S, S), brighter at the top
    img = bg * light + 0.08 * r(n, 1, size, size)
    # shape geometry
    radius = 0.16 + 0.14 * r(n, 1, 1)  # (n, 1, 1)
    cy = radius + (1 - 2 * radius) * r(n, 1, 1)
    cx = radius + (1 - 2 * radius) * r(n, 1, 1)
    fg = 0.35 + 0.65 * r(n, 3, 1, 1)

    def mask_at(dy: float, dx: float) -> torch.Tensor:
        y, x = yy - cy - dy, xx - cx - dx  # (n, S, S) offsets from the centre
        ay, ax = y.abs(), x.abs()
        rr = radius
        shapes = torch.stack(
            [
                (x**2 + y**2) <= rr**2,  # disk
                (ay <= rr * 0.8) & (ax <= rr * 0.8),  # square
                (y <= rr * 0.8) & (y >= -rr) & (ax <= (y + rr) * 0.55),  # triangle pointing up
                ((ay <= rr * 0.3) & (ax <= rr)) | ((ax <= rr * 0.3) & (ay <= rr)),  # cross
                ((x**2 + y**2) <= rr**2) & ((x**2 + y**2) >= (rr * 0.55) ** 2),  # ring
                ((ax <= rr) & (y >= rr * 0.4) & (y <= rr)) | ((x >= -rr) & (x <= -rr * 0.4) & (ay <= rr)),  # L
            ]
        )[:num_classes]  # (K, n, S, S)
        return shapes.gather(0, labels.view(1, n, 1, 1).expand(1, n, size, size))[0].unsqueeze(1).float()

    shadow = mask_at(-0.06, -0.06)
    img = img * (1 - 0.5 * shadow)
    shape = mask_at(0.0, 0.0)
    img = img * (1 - shape) + fg * (1 - 0.3 * yy.unsqueeze(1)) * shape
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels.long()


@SOURCES.register("synthetic")
def synthetic(cfg: DataConfig) -> DataSource:
    """Procedural colour shapes; ``synthetic_train``/``synthetic_test`` images, seeded by ``split_seed``."""
    size = cfg.image_size or 32
    xtr, ytr = make_synthetic(cfg.synthetic_train, size, seed=cfg.split_seed * 2 + 1, num_classes=cfg.synthetic_classes)
    xte, yte = make_synthetic(cfg.synthetic_test, size, seed=cfg.split_seed * 2 + 2, num_classes=cfg.synthetic_classes)
    return DataSource(
        name="synthetic",
        train=Split(xtr, ytr, [f"synthetic:train:{i}" for i in range(len(ytr))]),
        test=Split(xte, yte, [f"synthetic:test:{i}" for i in range(len(yte))]),
        classes=SYNTHETIC_CLASSES[: cfg.synthetic_classes],
    )
