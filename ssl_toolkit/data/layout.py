"""Image-folder layouts: which files, which classes, which split, before any decoding.

Layouts understood:

* ``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val/``): labelled, given splits;
* ``root/train/*`` and ``root/test/*`` with images directly inside: unlabelled, given splits;
* ``root/<class>/*``: labelled, seeded stratified train/test split;
* ``root/*`` (images directly inside): unlabelled, seeded random split.

Listing uses ``os.scandir`` (one ``stat`` per entry, no image is opened). Entries with an
image suffix that are not regular files (fifos, sockets, directories named ``*.png``,
dangling symlinks, symlink loops) are listed as unusable with the reason, like files that
fail to decode later. So is an image whose file name (or class folder name) is not valid
UTF-8: reports, caches and JSON hold text, so such a file is never read; renaming it is the
fix. Listed paths are text: bytes that are not UTF-8 are shown as U+FFFD (:func:`shown`).
A data path that is not valid UTF-8 is refused.

What a layout does not read is counted, never silently dropped (:class:`Unused`): images at
the top level of a folder whose class sub-folders are used (or next to ``train/`` and
``test/``), images in folders below the class folders (``root/<class>/<sub>/*``) or beside
the ones read, and files with other extensions, by extension. Folders below the class
folders are walked without following symbolic links; a symbolic link to a folder that is
not a class folder is not walked at all.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ssl_toolkit.data.images import IMAGE_EXTENSIONS, OTHER_IMAGE_EXTENSIONS, has_image_suffix
from ssl_toolkit.data.labels_csv import LABELS_FILE
from ssl_toolkit.errors import UserError
from ssl_toolkit.sampling import per_class_lowest, stratified_split
from ssl_toolkit.terminal import terminal_safe

TEST_DIRS = ("test", "val")
NOT_UTF8 = "file name is not valid UTF-8; rename it"
NOT_UTF8_FOLDER = "folder name is not valid UTF-8; rename it"
EXAMPLES = 5  # unused images named in a warning


def valid_utf8(name: str) -> bool:
    """Whether a name read from the file system is valid UTF-8 (Python holds other bytes as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(path: str | Path) -> str:
    """``path`` as text any UTF-8 writer takes, bytes that are not UTF-8 shown as U+FFFD (for reports, not for opening)."""
    return os.fsencode(path).decode("utf-8", "replace")


@dataclass
class Listing:
    """One folder's image files, the image-named entries that cannot be used, its sub-folders and other files."""

    files: list[Path] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    subdirs: list[Path] = field(default_factory=list)
    other: Counter[str] = field(default_factory=Counter)  # files with other extensions, by lower-case extension

    def refuse(self, reason: str) -> None:
        """Move every image file to :attr:`bad` with ``reason`` (a folder whose name cannot be used)."""
        self.bad += [(shown(p), reason) for p in self.files]
        self.files, self.sizes, self.mtimes = [], [], []


@dataclass
class Unused:
    """What a layout does not read: images it leaves out, counted (a few named), and other files by extension.

    Attributes:
        top_level: Images directly in a folder whose class sub-folders are used, or next to ``train/`` and ``test/``.
        nested: Images in folders the layout does not read (below the class folders, or beside the ones read).
        examples: The first :data:`EXAMPLES` of them, as paths.
        other: Files with extensions other than the image ones, by lower-case extension (``""``: none).
    """

    top_level: int = 0
    nested: int = 0
    examples: list[str] = field(default_factory=list)
    other: Counter[str] = field(default_factory=Counter)

    @property
    def images(self) -> int:
        return self.top_level + self.nested

    def add(self, paths: list[str], nested: bool) -> None:
        if nested:
            self.nested += len(paths)
        else:
            self.top_level += len(paths)
        self.examples += paths[: max(0, EXAMPLES - len(self.examples))]

    def merge(self, more: Unused) -> None:
        self.top_level += more.top_level
        self.nested += more.nested
        self.examples += more.examples[: max(0, EXAMPLES - len(self.examples))]
        self.other.update(more.other)

    def walk(self, folder: Path) -> None:
        """Count the images (as nested) and other files anywhere below ``folder``; symbolic links to folders are not followed."""
        stack = [folder]
        while stack:
            d = stack.pop()
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError:
                continue
            images, below = [], []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    below.append(Path(entry.path))
                elif has_image_suffix(entry.name):
                    images.append(entry.path)
                elif entry.is_file():
                    self.other[os.path.splitext(entry.name)[1].lower()] += 1
            self.add(images, nested=True)
            stack += reversed(below)  # depth first, in name order

    def other_images(self) -> dict[str, int]:
        """Counts of files with the extension of a picture type the toolkit does not read (``.heic``, ``.ico``, ...)."""
        return {ext: n for ext, n in sorted(self.other.items()) if ext in OTHER_IMAGE_EXTENSIONS}

    def warnings(self, root: Path) -> list[str]:
        """One line per kind of file left out (none when everything is read)."""
        lines = []
        if self.images:
            where = [f"{n} {what}" for n, what in ((self.top_level, "at the top level"), (self.nested, "in nested folders")) if n]
            names = ", ".join(terminal_safe(shown(os.path.relpath(p, root))) for p in self.examples)
            more = ", ..." if self.images > len(self.examples) else ""
            lines.append(
                f"warning: {self.images} image(s) in {terminal_safe(shown(root))} are not used ({', '.join(where)}): {names}{more} "
                "(layouts: docs/data.md, Image folders)"
            )
        others = self.other_images()
        if others:
            counts = ", ".join(f"{ext} {n}" for ext, n in others.items())
            lines.append(
                f"warning: {sum(others.values())} file(s) in {terminal_safe(shown(root))} of image types the toolkit does not read are not used "
                f"({counts}; it reads {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        return lines


def _entry_kind(entry: os.DirEntry) -> tuple[str, os.stat_result | None]:
    """``("file"|"dir"|reason, stat)`` of a directory entry, following symlinks."""
    try:
        st = entry.stat(follow_symlinks=True)
    except FileNotFoundError:
        return "dangling symlink", None
    except OSError as e:  # ELOOP and friends
        return (e.strerror or type(e).__name__).lower(), None
    if stat.S_ISREG(st.st_mode):
        return "file", st
    if stat.S_ISDIR(st.st_mode):
        return "dir", st
    if stat.S_ISFIFO(st.st_mode):
        return "a fifo, not a regular file", st
    if stat.S_ISSOCK(st.st_mode):
        return "a socket, not a regular file", st
    return "not a regular file", st


def list_folder(folder: Path) -> Listing:
    """One folder's image files (sorted by name), unusable image-named entries and sub-folders."""
    out = Listing()
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise UserError(f"cannot list {folder}: {e.strerror or e}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        kind, st = _entry_kind(entry)
        if kind == "dir":
            if has_image_suffix(entry.name):
                out.bad.append((shown(entry.path), "a directory, not an image file"))
            out.subdirs.append(Path(entry.path))
        elif not has_image_suffix(entry.name):
            if kind == "file":
                out.other[os.path.splitext(entry.name)[1].lower()] += 1
        elif not valid_utf8(entry.name):
            out.bad.append((shown(entry.path), NOT_UTF8))
        elif kind == "file" and st is not None:
            out.files.append(Path(entry.path))
            out.sizes.append(int(st.st_size))
            out.mtimes.append(int(st.st_mtime_ns))
        else:
            out.bad.append((shown(entry.path), kind))
    return out


@dataclass
class FolderLayout:
    """The files of an image folder before any decoding.

    Attributes:
        paths: Every image file, train files first.
        labels: Class index per file, or ``None`` for unlabelled folders.
        classes: Class names, or ``None``.
        n_train: When the folder has its own train/test split: how many of ``paths`` are train;
            ``None`` when the toolkit splits it (seeded, after dropping unreadable files).
        sizes: Bytes per file.
        mtimes: Modification time (ns) per file.
        bad: ``(path, reason)`` of image-named entries that are not regular files, or whose name is not UTF-8.
        unused: What the layout does not read (:class:`Unused`).
    """

    paths: list[Path]
    labels: list[int] | None
    classes: list[str] | None
    n_train: int | None
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    unused: Unused = field(default_factory=Unused)


def _list_class_folder(d: Path) -> Listing:
    lst = list_folder(d)
    if not valid_utf8(d.name):
        lst.refuse(NOT_UTF8_FOLDER)
    return lst


def scan_split(folder: Path, top: Listing | None = None) -> FolderLayout:
    """Files of one split folder: labelled by class sub-folders that hold images, else unlabelled.

    Labelled: the images directly inside the class folders; images next to them (at the top
    level) and below them are counted in :attr:`FolderLayout.unused`. Unlabelled: the images
    directly inside ``folder``; those in any sub-folder are counted.
    """
    top = list_folder(folder) if top is None else top
    unused, below = Unused(other=Counter(top.other)), Unused()
    listed = [(d, _list_class_folder(d)) for d in top.subdirs if not has_image_suffix(d.name)]
    for d, lst in listed:
        if d.is_symlink() and not lst.files:  # a link to some other tree that is no class folder: not walked
            continue
        below.other.update(lst.other)
        for sub in lst.subdirs:
            if not sub.is_symlink() and not has_image_suffix(sub.name):
                below.walk(sub)
    subs = [(d, lst) for d, lst in listed if lst.files or lst.bad]
    if any(lst.files for _, lst in subs):
        subs = [(d, lst) for d, lst in subs if lst.files]
        unused.add([str(p) for p in top.files], nested=False)
        unused.merge(below)
        out = FolderLayout([], [], [d.name for d, _ in subs], None, bad=list(top.bad), unused=unused)
        for i, (_, lst) in enumerate(subs):
            out.paths += lst.files
            out.sizes += lst.sizes
            out.mtimes += lst.mtimes
            out.labels += [i] * len(lst.files)  # type: ignore[operator]
        out.bad += [b for _, lst in listed for b in lst.bad]
        return out
    unused.merge(below)
    bad = top.bad + [b for _, lst in subs for b in lst.bad]
    return FolderLayout(top.files, None, None, None, top.sizes, top.mtimes, bad, unused)


def folder_layout(root: Path) -> FolderLayout:
    """Find the splits, classes and image files of ``root`` (layouts in the module docstring)."""
    if not valid_utf8(str(root)):
        raise UserError(f"data path is not valid UTF-8: {shown(root)}; rename it")
    if not root.is_dir():
        raise UserError(f"data path is not a folder: {root}")
    top = list_folder(root)
    if (root / LABELS_FILE).is_file():  # read for its labels (docs/data.md), not a file left out
        top.other -= Counter({".csv": 1})
    split_dirs = {d.name.lower(): d for d in top.subdirs}
    test_dir = next((split_dirs[n] for n in TEST_DIRS if n in split_dirs), None)
    if "train" in split_dirs and test_dir is not None:
        tr, te = scan_split(split_dirs["train"]), scan_split(test_dir)
        if (tr.labels is None) != (te.labels is None):
            raise UserError(f"{root}: train/ and {test_dir.name}/ must both have class folders or both have none")
        classes = sorted(set(tr.classes or []) | set(te.classes or [])) if tr.classes else None
        labels = None
        if classes:  # map both splits onto the union of class names
            labels = [classes.index((tr.classes or [])[i]) for i in tr.labels or []]
            labels += [classes.index((te.classes or [])[i]) for i in te.labels or []]
        unused = Unused(other=Counter(top.other))
        unused.add([str(p) for p in top.files], nested=False)
        for d in top.subdirs:  # beside train/ and test/ (val/ too, when test/ is there)
            if d not in (split_dirs["train"], test_dir) and not d.is_symlink() and not has_image_suffix(d.name):
                unused.walk(d)
        unused.merge(tr.unused)
        unused.merge(te.unused)
        layout = FolderLayout(
            tr.paths + te.paths,
            labels,
            classes,
            len(tr.paths),
            tr.sizes + te.sizes,
            tr.mtimes + te.mtimes,
            tr.bad + te.bad,
            unused,
        )
    else:
        layout = scan_split(root, top)
    if not layout.paths:
        extra = f"; {layout.unused.images} image(s) in folders no layout reads" if layout.unused.images else ""
        alone = [d for d in ("train", *TEST_DIRS) if d in split_dirs]
        if alone and layout.unused.images:  # a split folder without its other half
            pair = "test/ or val/" if alone[0] == "train" else "train/"
            extra += f" ({alone[0]}/ needs {pair} beside it; for a seeded split of its images use --data {split_dirs[alone[0]]})"
        if any((root / split / "index.json").is_file() for split in ("train", "test")):  # litdata's index of a shard split
            extra += "; it looks like shards that lost ssl_shards.json: write them again with ssl shard"
        raise UserError(f"no images in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}){extra}")
    return layout


def assign_split(
    n_train: int | None,
    kept: np.ndarray,
    labels: np.ndarray | None,
    test_fraction: float,
    seed: int,
    keys: np.ndarray | None = None,
) -> np.ndarray:
    """Split of the readable files: ``(len(kept),)`` int8, 0 = train, 1 = test.

    ``kept`` are the readable files' indices into :attr:`FolderLayout.paths`. A folder with its
    own split keeps it; otherwise each class (labelled files) or the whole folder puts
    ``round(n * test_fraction)`` files in test: those of lowest ``keys``
    (:func:`~ssl_toolkit.sampling.name_keys` of the files' paths: ``data.split_draw=names``),
    or, without keys, a seeded permutation of the readable files in listing order
    (``data.split_draw=listing``).
    """
    n = len(kept)
    split = np.zeros(n, np.int8)
    if n_train is not None:
        split[np.asarray(kept) >= n_train] = 1
    elif keys is not None:
        te, _ = per_class_lowest(labels if labels is not None else np.zeros(n, np.int64), keys, lambda m: int(round(m * test_fraction)))
        split[te] = 1
    elif labels is not None:
        _, te = stratified_split(labels, test_fraction, seed)
        split[te] = 1
    else:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        split[perm[: int(round(n * test_fraction))].numpy()] = 1
    return split
