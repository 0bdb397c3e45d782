"""Reading one image file: what counts as an image, colour-mode rules, crops from the original.

This is the leaf of the data package: every other data module reads pixels through it.
Colour modes: 16-bit and float single-channel images are rescaled to 8-bit ``L``; for
colour data CMYK is converted; transparency (alpha, or a colour key) is composited onto
white for both. A file above ``max_pixels`` is refused (PIL's decompression-bomb check is
replaced by this documented cap, so no raw library warning reaches the terminal). Pixels
are read upright: the EXIF orientation tag (cameras store portrait photos sideways and set
it) is applied when a file is decoded (:func:`upright`, what PIL's ``exif_transpose`` does,
without a copy for the usual untagged file). A GIF gives its first frame.

:func:`decode_crops` cuts each requested box out of the *original* photo and resamples it
to the target size in one ``resize(box=...)``. A JPEG is decoded at a reduced scale
(PIL's draft mode: 1/2, 1/4 or 1/8, done by libjpeg while decoding) whenever every box
still has at least the target resolution there, so a 12-megapixel photo is never fully
decoded to make a 224 px view. The boxes are drawn on the upright image; the draft scale
is the same along both axes, so it is chosen before the decode and the turn done after it.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
# Extensions of pictures the toolkit does not read: files with them are counted and named in a warning, never silently ignored.
OTHER_IMAGE_EXTENSIONS = {
    ".apng", ".arw", ".avif", ".cr2", ".dng", ".heic", ".heif", ".ico", ".jfif", ".jp2", ".jpe", ".jxl",
    ".nef", ".pbm", ".pgm", ".pnm", ".ppm", ".psd", ".qoi", ".raw", ".tga",
}  # fmt: skip
SINGLE_CHANNEL_MODES = {"L", "1", "I;16", "I;16B", "I;16L", "I", "F"}
HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I", "F"}
READ_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
DECODE_VERSION = 4  # bumped when the pixels a file decodes to change (2: EXIF orientation; 3: one resize rule; 4: colour keys, inspect's JPEG draft); caches key on it
DEFAULT_MAX_PIXELS = 60_000_000  # 60 MP: every camera photo; a 10000 x 10000 image is listed, not decoded

ORIENTATION = 0x0112  # the EXIF tag
TURNS = {  # EXIF orientation -> the transposition that makes the pixels upright (as PIL's exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SWAPS_SIDES = {5, 6, 7, 8}  # orientations that exchange width and height

Image.MAX_IMAGE_PIXELS = None  # the cap is checked by open_image(), with a one-line reason (and PIL then never warns)

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in original pixels


class TooLarge(ValueError):
    """An image above the pixel cap."""


def has_image_suffix(name: str) -> bool:
    """An image file name: a known extension (any case), not hidden (string work only: it runs once per listed file)."""
    base = os.path.basename(name)
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def failure_reason(e: BaseException) -> str:
    """The first line of an exception's message (or its type name): why a file is unreadable."""
    text = str(e).splitlines()[0].strip() if str(e).strip() else ""
    return text or type(e).__name__


def open_image(path: str | Path | IO[bytes], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``path`` (a file name or an open binary file) lazily (header only); :class:`TooLarge` above ``max_pixels``."""
    im = Image.open(path)
    if max_pixels is not None and im.size[0] * im.size[1] > max_pixels:
        w, h = im.size
        im.close()
        raise TooLarge(f"{w}x{h} = {w * h:,} pixels is above data.max_pixels ({max_pixels:,})")
    return im


def orientation(im: Image.Image) -> int:
    """The EXIF orientation of an opened image, 1-8 (1 when absent, unknown or unreadable).

    JPEG, WebP and TIFF carry it in the header, so reading it decodes nothing; PIL loads a
    PNG's pixels first (its ``eXIf`` chunk may follow them), so call this on PNGs only where
    they are decoded anyway.
    """
    try:
        value = im.getexif().get(ORIENTATION, 1)
    except (*READ_ERRORS, struct.error, TypeError, KeyError):  # a malformed EXIF block: the pixels as stored
        return 1
    return value if isinstance(value, int) and value in TURNS else 1


def upright(im: Image.Image) -> Image.Image:
    """``im`` decoded and turned as its EXIF orientation says (PIL's ``exif_transpose``); ``im`` itself when untagged.

    The turned image's orientation tag is cleared, so calling this twice turns once.
    """
    turn = orientation(im)
    if turn == 1:
        return im
    im.load()
    return ImageOps.exif_transpose(im)


def upright_size(im: Image.Image) -> tuple[int, int]:
    """``(width, height)`` as displayed: the stored size, swapped when the EXIF orientation turns the image a quarter."""
    w, h = im.size
    return (h, w) if orientation(im) in SWAPS_SIDES else (w, h)


def to_8bit(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float single-channel images rescaled to 8-bit ``L``; other images unchanged.

    16-bit images span 0-65535. A float image whose values lie in [0, 1] spans that range;
    any other float or 32-bit integer image spans 0-255 when no value exceeds 255, else
    0-65535. Values outside the span are clipped.
    """
    if im.mode not in HIGH_DEPTH_MODES:
        return im
    a = np.asarray(im, dtype=np.float32)
    top = float(np.nanmax(a)) if a.size and not np.isnan(a).all() else 0.0
    if im.mode.startswith("I;16") or top > 255:
        hi = 65535.0
    elif im.mode == "F" and top <= 1.0:
        hi = 1.0
    else:
        hi = 255.0
    a = np.nan_to_num(a, nan=0.0, posinf=hi, neginf=0.0)  # (H, W)
    return Image.fromarray(np.clip(a * (255.0 / hi), 0, 255).astype(np.uint8), "L")


def to_mode(im: Image.Image, channels: int) -> Image.Image:
    """``im`` as 8-bit ``L`` (``channels == 1``) or ``RGB``, with transparency composited onto white.

    Transparency is an alpha channel (``RGBA``, ``LA``, ``PA``) or a transparent colour
    (``P``, ``L``, ``RGB`` or ``1`` with a ``tRNS``/GIF colour key), in either case.
    """
    im = to_8bit(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode in ("P", "L", "RGB", "1") and "transparency" in im.info):
        rgba = im.convert("RGBA")  # a colour key becomes alpha 0
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    if channels == 1:
        return im if im.mode == "L" else im.convert("L")
    return im if im.mode == "RGB" else im.convert("RGB")


def to_chw(im: Image.Image) -> np.ndarray:
    """An ``L`` or ``RGB`` image -> ``(C, H, W)`` uint8 array."""
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def to_array(im: Image.Image, size: int, channels: int) -> np.ndarray:
    """``(channels, size, size)`` uint8 centre square of a decoded ``im`` (upright), resized as :func:`cut_crops` resizes."""
    im = to_mode(upright(im), channels)
    return to_chw(resize_box(im, size, center_square(*im.size)))


def resize_box(im: Image.Image, size: int, box: Box) -> Image.Image:
    """The region ``box`` of ``im`` resized to ``size`` x ``size`` (bilinear; the one resize rule of every path)."""
    return im.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)


# ---------------------------------------------------------------------------------------
# crops from the original photo
# ---------------------------------------------------------------------------------------
def center_square(width: int, height: int) -> Box:
    """The largest centred square of a ``width`` x ``height`` image."""
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def random_resized_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator) -> Box:
    """A random-resized-crop box (Szegedy et al., 2015; torchvision's sampling rule).

    Area drawn uniformly from ``scale`` (share of the image), aspect ratio log-uniformly from
    ``ratio`` (width / height), position uniform; ten tries, then the centre crop clamped to
    ``ratio``, as torchvision does. The box may cover any region of the photo.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        r = math.exp(rng.uniform(log_lo, log_hi))
        w, h = math.sqrt(target * r), math.sqrt(target / r)
        if 0 < w <= width and 0 < h <= height:
            left = rng.uniform(0, width - w)
            top = rng.uniform(0, height - h)
            return (left, top, left + w, top + h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, width / ratio[0]
    elif in_ratio > ratio[1]:
        w, h = height * ratio[1], height
    else:
        w, h = width, height
    left, top = (width - w) / 2, (height - h) / 2
    return (left, top, left + w, top + h)


def draft_scale(boxes: Sequence[Box], size: int) -> float:
    """Largest shrink factor at which every box still has at least ``size`` px on each side (>= 1)."""
    return max(1.0, min(min(b[2] - b[0], b[3] - b[1]) / size for b in boxes))


def decode_crops(
    path: str | Path | IO[bytes],
    channels: int,
    size: int,
    boxes_for: Callable[[int, int], list[Box]],
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode ``path`` once and cut ``(V, channels, size, size)`` uint8 crops from it.

    Args:
        path: The image file, or an open binary file (a shard's encoded bytes).
        channels: 1 (``L``) or 3 (``RGB``).
        size: Side of every crop.
        boxes_for: ``(width, height) -> list of boxes`` in original pixels of the upright image
            (called once, with its size, before decoding: the boxes decide the JPEG draft scale).
        max_pixels: The pixel cap (:func:`open_image`).
    """
    with open_image(path, max_pixels) as im:
        return cut_crops(im, channels, size, boxes_for)


def cut_crops(im: Image.Image, channels: int, size: int, boxes_for: Callable[[int, int], list[Box]]) -> np.ndarray:
    """``(V, channels, size, size)`` uint8 crops of an opened image, not yet decoded (see :func:`decode_crops`)."""
    if im.format != "JPEG":  # no draft decoding; a PNG's orientation may follow its pixels
        im.load()
    stored_w, stored_h = im.size
    width, height = upright_size(im)
    boxes = boxes_for(width, height)
    shrink = draft_scale(boxes, size)
    if shrink >= 2 and im.format == "JPEG":  # libjpeg decodes at 1/2, 1/4 or 1/8 directly, the same along both axes
        im.draft("L" if channels == 1 else "RGB", (math.ceil(stored_w / shrink), math.ceil(stored_h / shrink)))
    im = to_mode(upright(im), channels)  # decodes (at the draft scale, when one was set), then turns
    fx, fy = im.size[0] / width, im.size[1] / height
    return np.stack([to_chw(resize_box(im, size, (x0 * fx, y0 * fy, x1 * fx, y1 * fy))) for (x0, y0, x1, y1) in boxes])
