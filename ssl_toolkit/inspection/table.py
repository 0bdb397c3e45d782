"""The per-image table every check reads: one row per readable image, columns as arrays.

Two builders fill it. :func:`table_from_source` takes a tensor source (``digits``,
``synthetic``, ``fashion-mnist``): the images are already ``uint8`` arrays, so hashes and
thumbnails are computed in batched tensor ops. :func:`table_from_folder` streams the files of
an image folder's index (the files and labels training reads) through
:func:`ssl_toolkit.data.scan.scan_files` (parallel threads, one decode per file): header
facts, a content hash of the decoded pixels, the small grayscale thumbnails of the
near-duplicate check and the toolkit's own square array for the normalisation statistics;
files that fail to decode are listed with the reason.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ssl_toolkit.config import DataConfig
from ssl_toolkit.data.base import DataSource, Split
from ssl_toolkit.data.folder import split_rows, with_csv_labels
from ssl_toolkit.data.images import HIGH_DEPTH_MODES, open_image, to_8bit, upright
from ssl_toolkit.data.index import folder_index
from ssl_toolkit.data.layout import Unused
from ssl_toolkit.data.processing import Processing
from ssl_toolkit.data.scan import FileScan, default_workers, scan_bytes, scan_files
from ssl_toolkit.errors import UserError

THUMB = 16  # side of the grayscale thumbnail that confirms near duplicates
DHASH_SHAPE = (8, 9)  # rows x columns of the difference-hash thumbnail (8 x 8 = 64 bits)
DHASH_MARGIN = 1e-3  # a step counts as "brighter" only above float noise (flat areas give 0 bits)

StageProgress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class ImageTable:
    """One row per readable image.

    Attributes:
        name: Data source name (folder path for folders).
        kind: ``"tensor"``, ``"folder"`` or ``"shards"``.
        ids: Image identifiers (file paths for folders, ``name:split:index`` or ``digits:index`` otherwise).
        split: ``(N,)`` int8, 0 = train, 1 = test.
        labels: ``(N,)`` int64 class indices, ``(N, K)`` uint8 multi-hot rows (a ``labels.csv``), or ``None``.
        classes: Class names, or ``None``.
        width: ``(N,)`` widths as displayed (EXIF orientation applied).
        height: ``(N,)`` heights as displayed.
        modes: ``(N,)`` PIL modes (``L``/``RGB`` for tensor sources).
        formats: ``(N,)`` file formats (folders, shards) or ``None``.
        nbytes: ``(N,)`` file sizes (folders, shards) or ``None``.
        exact_key: ``(N,)`` int64; two images share a key exactly when their decoded pixels are identical.
        dhash: ``(N, 8)`` uint8, the packed 64-bit difference hash.
        thumbs: ``(N, 256)`` uint8 16x16 grayscale thumbnails.
        channels: Channels of the toolkit's arrays (1 or 3).
        image_size: Side of the toolkit's square arrays.
        mean: Per-channel mean of the training split, as the toolkit normalises.
        std: Per-channel std of the training split.
        unreadable: ``(path, reason)`` of files that could not be decoded.
        unused: What a folder's layout does not read (folders only).
        empty_classes: Class folders none of whose files opens, left out of the classes (folders only).
        images: ``(N, C, S, S)`` uint8 toolkit arrays, when kept.
        paths: Files (folders).
        reader: Encoded bytes of row ``i`` (shards).
    """

    name: str
    kind: str
    ids: list[str]
    split: np.ndarray
    labels: np.ndarray | None
    classes: list[str] | None
    width: np.ndarray
    height: np.ndarray
    modes: np.ndarray
    formats: np.ndarray | None
    nbytes: np.ndarray | None
    exact_key: np.ndarray
    dhash: np.ndarray
    thumbs: np.ndarray
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    unused: Unused | None = None
    empty_classes: list[str] = field(default_factory=list)
    images: torch.Tensor | None = None
    paths: list[Path] | None = None
    reader: Callable[[int], bytes] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def to_source(self) -> DataSource:
        """The kept arrays as a :class:`DataSource` (for embeddings); needs ``images``."""
        if self.images is None:
            raise ValueError("the table keeps no image arrays")
        parts = []
        for s in (0, 1):
            idx = torch.from_numpy(np.flatnonzero(self.split == s))
            labels = None if self.labels is None else torch.from_numpy(self.labels)[idx]
            parts.append(Split(self.images[idx], labels, [self.ids[i] for i in idx.tolist()]))
        pixels = hashlib.sha256(np.ascontiguousarray(self.exact_key).tobytes()).hexdigest()[:32]  # changes with any image's pixels
        return DataSource(
            self.name, parts[0], parts[1], self.classes, grayscale_origin=self.channels == 1, mean=self.mean, std=self.std, content=pixels
        )

    def thumbnail(self, i: int, px: int = 96) -> tuple[str, bytes]:
        """Image ``i`` as a small PNG/JPEG for display: (MIME type, bytes)."""
        if self.paths is None and self.reader is None:
            if self.images is None:
                raise ValueError("the table keeps neither files nor image arrays")
            a = self.images[i].numpy()
            im = Image.fromarray(a[0]) if a.shape[0] == 1 else Image.fromarray(a.transpose(1, 2, 0))
            if max(im.size) > px:
                im.thumbnail((px, px))
            return "image/png", _encode(im, "PNG")
        with open_image(self.paths[i] if self.paths is not None else io.BytesIO(self.reader(i)), None) as src:  # type: ignore[misc]
            src.draft("RGB", (px, px))  # JPEG: decode at a reduced scale
            im = to_8bit(upright(src))  # as displayed: the EXIF orientation applied
            if im.mode in ("P", "PA", "LA"):
                im = im.convert("RGBA")
            elif im.mode == "1":
                im = im.convert("L")
            elif im.mode not in ("L", "RGB", "RGBA"):
                im = im.convert("RGB")
            im.thumbnail((px, px))
            if im.mode == "RGBA":
                return "image/png", _encode(im, "PNG")
            return "image/jpeg", _encode(im, "JPEG", quality=85)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------
# hashing helpers shared by both builders
# ---------------------------------------------------------------------------------------
def exact_keys(rows: np.ndarray) -> np.ndarray:
    """Group ids of identical rows: ``rows`` is ``(N, B)`` uint8 (bytes of each image or its digest)."""
    rows = np.ascontiguousarray(rows)
    if len(rows) == 0:
        return np.zeros(0, np.int64)
    v = rows.view(np.dtype((np.void, rows.shape[1]))).ravel()
    _, inverse = np.unique(v, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def dhash_codes(small: np.ndarray) -> np.ndarray:
    """Difference hash: ``(N, 8, 9)`` grayscale thumbnails -> ``(N, 8)`` uint8 (64 bits, one per left<right step)."""
    bits = small[:, :, 1:] > small[:, :, :-1] + DHASH_MARGIN  # (N, 8, 8)
    return np.packbits(bits.reshape(len(small), 64), axis=1)


@functools.lru_cache(maxsize=256)
def box_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` area-averaging weights: output cell ``k`` is the mean of input span ``[k s, (k + 1) s)``, ``s = n_in / n_out``."""
    s = n_in / n_out
    edges = np.arange(n_out + 1) * s
    px = np.arange(n_in)[None, :]
    cover = np.clip(np.minimum(edges[1:, None], px + 1) - np.maximum(edges[:-1, None], px), 0.0, None)
    return cover / s


def area_thumbnails(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact area averages of ``(N, H, W)`` grayscale images (0-255).

    Returns the ``(N, 8, 9)`` float thumbnails of the difference hash and the ``(N, 256)``
    uint8 16x16 thumbnails of the near-duplicate check. Files and tensor sources both go
    through here, so the same picture gets the same hashes whichever way it is stored.
    """
    g = gray.astype(np.float64)
    _, h, w = g.shape
    small = box_weights(h, DHASH_SHAPE[0]) @ g @ box_weights(w, DHASH_SHAPE[1]).T
    thumb = box_weights(h, THUMB) @ g @ box_weights(w, THUMB).T
    return small.astype(np.float32), np.clip(np.rint(thumb), 0, 255).astype(np.uint8).reshape(len(g), -1)


def pixel_digest(im: Image.Image) -> bytes:
    """BLAKE2 digest of the decoded pixels, independent of how the file stores them.

    Pixels are brought to one canonical form first: RGBA, then the alpha channel dropped when
    fully opaque, then a single channel kept when R = G = B. So the same picture saved as an
    RGB PNG, a BMP, a palette GIF-style PNG or a grayscale file hashes the same. 16-bit and
    float images are hashed by value.
    """
    if im.mode in HIGH_DEPTH_MODES:
        a = np.asarray(im).astype(np.float64)
    elif im.mode == "L":  # already canonical: opaque, one channel
        a = np.asarray(im)
    else:
        a = np.asarray(im if im.mode == "RGB" else im.convert("RGBA"))
        if a.shape[-1] == 4 and (a[..., 3] == 255).all():
            a = a[..., :3]
        if a.shape[-1] == 3 and (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all():
            a = a[..., 0]
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.digest()


def fingerprint(im: Image.Image) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Per-file hashes: (pixel digest, ``(8, 9)`` float thumbnail for dHash, ``(256,)`` uint8 thumbnail)."""
    gray = to_8bit(im)
    gray = gray if gray.mode == "L" else gray.convert("L")
    small, thumb = area_thumbnails(np.asarray(gray)[None])
    return pixel_digest(im), small[0], thumb[0]


def gray_uint8(x: torch.Tensor) -> np.ndarray:
    """``(B, C, H, W)`` uint8 -> ``(B, H, W)`` uint8 luma, bit-exact with PIL's ``convert("L")`` (ITU-R 601-2)."""
    if x.shape[1] == 1:
        return x[:, 0].numpy()
    r, g, b = x[:, 0].int(), x[:, 1].int(), x[:, 2].int()
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8).numpy()


# ---------------------------------------------------------------------------------------
# tensor sources
# ---------------------------------------------------------------------------------------
def table_from_source(source: DataSource, progress: StageProgress | None = None, chunk: int = 8192) -> ImageTable:
    """Build the table of a tensor source; everything is batched over the uint8 arrays."""
    x = torch.cat([source.train.images, source.test.images])
    n, c, h, w = x.shape
    split = np.concatenate([np.zeros(len(source.train), np.int8), np.ones(len(source.test), np.int8)])
    labels = None
    if source.labelled:
        labels = torch.cat([source.train.labels, source.test.labels]).numpy().astype(np.int64)
    dh, th = [], []
    for start in range(0, n, chunk):
        small, thumb = area_thumbnails(gray_uint8(x[start : start + chunk]))
        dh.append(dhash_codes(small))
        th.append(thumb)
        if progress is not None:
            progress("hashing", min(n, start + chunk), n)
    mode = "L" if c == 1 else "RGB"
    return ImageTable(
        name=source.name,
        kind="tensor",
        ids=list(source.train.ids) + list(source.test.ids),
        split=split,
        labels=labels,
        classes=source.classes,
        width=np.full(n, w, np.int64),
        height=np.full(n, h, np.int64),
        modes=np.full(n, mode, dtype=object),
        formats=None,
        nbytes=None,
        exact_key=exact_keys(x.reshape(n, -1).numpy()),
        dhash=np.concatenate(dh) if dh else np.zeros((0, 8), np.uint8),
        thumbs=np.concatenate(th) if th else np.zeros((0, THUMB * THUMB), np.uint8),
        channels=c,
        image_size=w,
        mean=tuple(source.mean),
        std=tuple(source.std),
        unreadable=list(source.skipped),
        images=x,
    )


# ---------------------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------------------
def table_from_folder(
    root: Path,
    cfg: DataConfig,
    keep_arrays: bool = False,
    workers: int | None = None,
    progress: StageProgress | None = None,
) -> ImageTable:
    """Scan an image folder once, in parallel, keeping only small per-file results.

    The files, labels, splits, channels and statistics are those of
    :func:`ssl_toolkit.data.folder.load_folder`: the folder's cached index (files whose
    headers read), the multi-hot labels of its ``labels.csv`` (or ``data.labels``) when it
    has one, the split :func:`~ssl_toolkit.data.folder.split_rows` draws over the index,
    single-channel data when every indexed file is single-channel, and statistics over the
    training files that decode, at ``cfg.image_size`` (default 32). Every indexed file is
    decoded; one that fails is listed as unreadable and left out of its split.
    """
    index = folder_index(root, cfg.max_pixels, progress=progress is not None)  # inspect -q: no progress at all
    if not len(index):
        raise UserError(f"no readable image in {root} ({len(index.bad)} files, none could be opened)")
    index = with_csv_labels(root, index, cfg.labels)
    train, test = split_rows(index, cfg)
    size, channels = cfg.image_size or 32, index.channels
    Processing.from_config(cfg).check(channels, str(root), size)  # refused before any file is read
    report = None if progress is None else (lambda done, total: progress("reading files", done, total))
    # Every indexed file is decoded (so each unreadable one is listed, data.limit or not), to
    # RGB: for an all-single-channel folder, channel 0 of the RGB array is exactly the L array
    # load_folder would make, so one pass serves both cases.
    paths = [Path(index.path(r)) for r in range(len(index))]
    files = scan_files(paths, size, 3, visit=fingerprint, workers=workers, progress=report, max_pixels=cfg.max_pixels)
    kept, cols, unreadable = _file_columns(files, keep_arrays)
    unreadable = list(index.bad) + unreadable  # fifos, dangling links, headers that do not read, then pixels that do not
    if not kept:
        raise UserError(f"no readable image in {root} ({len(index)} files, none could be decoded)")
    rows = np.asarray(kept, np.int64)
    keep = np.flatnonzero(np.isin(rows, train) | np.isin(rows, test))  # data.limit leaves training files out
    rows = rows[keep]
    split = np.isin(rows, test).astype(np.int8)
    s1, s2 = np.stack(cols["s1"])[keep][:, :channels], np.stack(cols["s2"])[keep][:, :channels]
    on_train = split == 0
    mean, std = _stats(s1[on_train] if on_train.any() else s1, s2[on_train] if on_train.any() else s2, size * size)
    images = None
    if keep_arrays:
        images = torch.from_numpy(np.stack(cols["array"])[keep][:, :channels].copy())
    return ImageTable(
        name=str(root),
        kind="folder",
        ids=[str(paths[r]) for r in rows],
        split=split,
        labels=None if index.labels is None else index.labels[rows],
        classes=index.classes,
        width=np.asarray(cols["width"], np.int64)[keep],
        height=np.asarray(cols["height"], np.int64)[keep],
        modes=np.asarray(cols["mode"], dtype=object)[keep],
        formats=np.asarray(cols["format"], dtype=object)[keep],
        nbytes=np.asarray(cols["bytes"], np.int64)[keep],
        exact_key=exact_keys(np.frombuffer(b"".join(cols["digest"]), np.uint8).reshape(len(kept), -1)[keep]),
        dhash=dhash_codes(np.stack(cols["small"])[keep]),
        thumbs=np.stack(cols["thumb"])[keep],
        channels=channels,
        image_size=size,
        mean=mean,
        std=std,
        unreadable=unreadable,
        unused=index.unused,
        empty_classes=index.empty_classes,
        images=images,
        paths=[paths[r] for r in rows],
    )


# ---------------------------------------------------------------------------------------
# shards
# ---------------------------------------------------------------------------------------
def table_from_shards(
    root: str,
    cfg: DataConfig,
    keep_arrays: bool = False,
    workers: int | None = None,
    progress: StageProgress | None = None,
) -> ImageTable:
    """Scan a shard folder (``ssl shard``) item by item, as a folder's files are scanned.

    The items hold the files' original encoded bytes, so sizes, modes, formats, hashes and
    duplicates are those the folder gives; the splits, classes and channels are the ones
    ``ssl shard`` wrote, and the statistics are recomputed over the training split at
    ``cfg.image_size`` (default: the shards'). Items stream through in bounded chunks.
    """
    from ssl_toolkit.data.shards import FORMAT, SKIPPED_FILE, ShardSplit, read_info
    from ssl_toolkit.data.skip_list import listed_entries

    info = read_info(root)
    if info.format != FORMAT:
        raise UserError(f"{root}: shard format '{info.format}' is not supported (expected {FORMAT})")
    size = cfg.image_size or info.image_size
    Processing.from_config(cfg).check(info.channels, str(root), size)  # refused before any item is read
    parts = [ShardSplit(root, name, info, size) for name in ("train", "test")]
    where = np.concatenate([np.zeros(len(parts[0]), np.int8), np.ones(len(parts[1]), np.int8)])
    rows = np.concatenate([np.arange(len(p), dtype=np.int64) for p in parts])
    names = [name for p in parts for name in p.ids]  # original paths (root:split:row for shards without names.npy)

    def item(k: int) -> bytes:
        part, row = parts[int(where[k])], int(rows[k])
        return part.encoded(row)  # an image that does not decode is listed; an item that cannot be read is damage

    files = _scan_items(item, names, size, workers, progress, cfg.max_pixels)
    kept, cols, unreadable = _file_columns(files, keep_arrays)
    skipped = Path(root) / SKIPPED_FILE  # files `ssl shard` could not decode, left out of the shards
    unreadable = (listed_entries(skipped.read_bytes()) if skipped.is_file() else []) + unreadable
    if not kept:
        raise UserError(f"no readable image in {root} ({len(where)} items, none could be decoded)")
    k = np.asarray(kept)
    channels = info.channels
    split = where[k]
    labels = None
    if info.classes is not None and all(p.labels is not None for p in parts if len(p)):  # multi-hot rows for multi-label shards
        labels = np.concatenate([p.labels.numpy() for p in parts if p.labels is not None])[k]
    s1, s2 = np.stack(cols["s1"])[:, :channels], np.stack(cols["s2"])[:, :channels]
    train = split == 0
    mean, std = _stats(s1[train] if train.any() else s1, s2[train] if train.any() else s2, size * size)
    return ImageTable(
        name=root,
        kind="shards",
        ids=[names[i] for i in kept],
        split=split,
        labels=labels,
        classes=info.classes if labels is not None else None,
        width=np.asarray(cols["width"], np.int64),
        height=np.asarray(cols["height"], np.int64),
        modes=np.asarray(cols["mode"], dtype=object),
        formats=np.asarray(cols["format"], dtype=object),
        nbytes=np.asarray(cols["bytes"], np.int64),
        exact_key=exact_keys(np.frombuffer(b"".join(cols["digest"]), np.uint8).reshape(len(kept), -1)),
        dhash=dhash_codes(np.stack(cols["small"])),
        thumbs=np.stack(cols["thumb"]),
        channels=channels,
        image_size=size,
        mean=mean,
        std=std,
        unreadable=unreadable,
        images=torch.from_numpy(np.stack(cols["array"])[:, :channels].copy()) if keep_arrays else None,
        reader=lambda i: item(int(k[i])),
    )


def _scan_items(
    item: Callable[[int], bytes],
    names: list[str],
    size: int,
    workers: int | None,
    progress: StageProgress | None,
    max_pixels: int | None,
    chunk: int = 512,
) -> Iterable[FileScan]:
    """:func:`scan_bytes` over every item (``item(k)``, named ``names[k]``), read in order and decoded
    in parallel threads, ``chunk`` at a time."""
    from concurrent.futures import ThreadPoolExecutor

    total = len(names)
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as ex:
        for start in range(0, total, chunk):
            batch = [(names[i], item(i)) for i in range(start, min(total, start + chunk))]
            yield from ex.map(lambda nb: scan_bytes(nb[0], nb[1], size, 3, visit=fingerprint, max_pixels=max_pixels), batch)
            if progress is not None:
                progress("reading shards", min(total, start + chunk), total)


def _file_columns(files: Iterable[FileScan], keep_arrays: bool) -> tuple[list[int], dict[str, list], list[tuple[str, str]]]:
    """Per readable file its header facts, fingerprints and channel sums; the unreadable ones with why."""
    kept: list[int] = []
    unreadable: list[tuple[str, str]] = []
    cols: dict[str, list] = {k: [] for k in ("width", "height", "mode", "format", "bytes", "digest", "small", "thumb", "s1", "s2", "array")}
    for i, rec in enumerate(files):
        if not rec.ok:
            unreadable.append((str(rec.path), rec.error or "unreadable"))
            continue
        kept.append(i)
        digest, small, thumb = rec.extra
        assert rec.array is not None  # the files are scanned at a size, so every readable one has its array
        a = rec.array.reshape(3, -1).astype(np.float64)  # (3, S*S)
        for k, v in (
            ("width", rec.width),
            ("height", rec.height),
            ("mode", rec.mode),
            ("format", rec.format or "?"),
            ("bytes", rec.bytes),
            ("digest", digest),
            ("small", small),
            ("thumb", thumb),
            ("s1", a.sum(1)),
            ("s2", (a * a).sum(1)),
        ):
            cols[k].append(v)
        if keep_arrays:
            cols["array"].append(rec.array)
    return kept, cols, unreadable


def _stats(s1: np.ndarray, s2: np.ndarray, pixels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and (unbiased) std per channel on the [0, 1] scale from per-image sums of x and x^2 (0-255)."""
    m = len(s1) * pixels
    t1, t2 = s1.sum(0) / 255.0, s2.sum(0) / 255.0**2
    mean = t1 / m
    var = np.maximum(t2 - t1 * t1 / m, 0.0) / max(m - 1, 1)
    std = np.maximum(np.sqrt(var), 1e-3)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)
