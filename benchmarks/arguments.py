"""Option checks shared by the benchmark scripts: every value is refused before any work starts.

The ``type=`` functions here are for :mod:`argparse`: each turns the option's text into its
value or raises :class:`argparse.ArgumentTypeError`, which argparse prints as one
``error: argument --x: ...`` line after the usage line and exits with code 2. The checks
that need more than one option (or a value computed after parsing) return the problem as
text (``None`` when there is none), for the script's ``ap.error``.

None of the checks writes anything: an output path is checked by finding its nearest
existing folder and trying to make (and at once remove) an empty folder there.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from ssl_toolkit.errors import did_you_mean

# Lightning's precision names, as ``TrainerConfig.precision`` takes them
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16")
ACCELERATORS = ("cpu", "gpu")
T = TypeVar("T", int, float)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def checked(convert: Callable[[str], T], ok: Callable[[T], bool], requirement: str) -> Callable[[str], T]:
    """A ``type=`` function: ``convert`` the text (an int or a float), then refuse a value ``ok`` rejects.

    Args:
        convert: ``int`` or ``float`` (a text it cannot read is refused as not a number).
        ok: Whether a value is taken (``nan`` fails every comparison, so ranges refuse it).
        requirement: What a value must be, for the message (``must be {requirement}, got ...``:
            the integer read, or the text given for a float, so ``nan`` reads as typed).

    Returns:
        The function.
    """

    def parse(text: str) -> T:
        value = _int(text) if convert is int else _float(text)
        if not ok(value):  # type: ignore[arg-type]
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {value if convert is int else repr(text)}")
        return value  # type: ignore[return-value]

    return parse


#: An integer of at least 1.
positive_int = checked(int, lambda v: v >= 1, "at least 1")
#: An integer of at least 0.
non_negative_int = checked(int, lambda v: v >= 0, "at least 0")
#: A finite number above 0 (``nan`` and ``inf`` refused).
positive_float = checked(float, lambda v: math.isfinite(v) and v > 0, "a finite number above 0")
#: A share in (0, 1]: above 0, at most 1 (a label fraction, where 1 is every label).
fraction = checked(float, lambda v: 0 < v <= 1, "in (0, 1]")
#: A share in (0, 1): above 0 and below 1 (a held-out part, where both parts must be non-empty).
open_fraction = checked(float, lambda v: 0 < v < 1, "in (0, 1)")


def int_range(low: int, high: int) -> Callable[[str], int]:
    """A ``type=`` function for an integer between ``low`` and ``high`` (both included)."""
    return checked(int, lambda v: low <= v <= high, f"between {low} and {high}")


def int_list(minimum: int | None = None) -> Callable[[str], list[int]]:
    """A ``type=`` function for comma-separated integers, each at least ``minimum`` when given.

    Args:
        minimum: The smallest value taken, or ``None`` for any integer.

    Returns:
        The function, which gives the list and raises :class:`argparse.ArgumentTypeError`
        for an empty list, a part that is not an integer, or one below ``minimum``.
    """

    def parse(text: str) -> list[int]:
        parts = [p.strip() for p in text.split(",")]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
        if minimum is not None and any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(f"every value must be at least {minimum}, got {text!r}")
        return values

    return parse


def names(choices: Iterable[str] | Callable[[], Iterable[str]], what: str = "name", every: str | None = None) -> Callable[[str], list[str]]:
    """A ``type=`` function for comma-separated names, each one of ``choices``.

    Args:
        choices: The names taken, or a function that lists them (called when the option is parsed).
        what: What a name is, for the message (``task``, ``part``).
        every: A word that stands for every choice (``all``), or ``None``.

    Returns:
        The function, which gives the names in the order given (duplicates dropped) and raises
        :class:`argparse.ArgumentTypeError` naming the first unknown one and the choices.
    """

    def parse(text: str) -> list[str]:
        known = list(choices() if callable(choices) else choices)
        if every is not None and text == every:
            return known
        given = list(dict.fromkeys(p.strip() for p in text.split(",")))
        for name in given:
            if name not in known:
                also = f", or {every}" if every else ""
                raise argparse.ArgumentTypeError(
                    f"unknown {what} {name!r}{did_you_mean(name, known)}; choose from {', '.join(known)}{also}"
                )
        return given

    return parse


def one_of(choices: Iterable[str] | Callable[[], Iterable[str]], what: str = "name") -> Callable[[str], str]:
    """A ``type=`` function for one name of ``choices`` (a "did you mean" hint for a typo).

    Args:
        choices: The names taken, or a function that lists them.
        what: What a name is, for the message.

    Returns:
        The function, which raises :class:`argparse.ArgumentTypeError` for an unknown name.
    """
    many = names(choices, what)

    def parse(text: str) -> str:
        if "," in text:
            raise argparse.ArgumentTypeError(f"takes one {what}, got {text!r}")
        return many(text)[0]

    return parse


def _is_timm_model(name: str) -> bool:
    import timm

    return bool(name) and timm.is_model(name.split(".", 1)[0])


def timm_backbone(text: str) -> str:
    """A timm model name (a pretrained tag such as ``resnet18.a1_in1k`` allowed).

    Args:
        text: The option's text.

    Returns:
        The name.

    Raises:
        argparse.ArgumentTypeError: If timm has no model of that name.
    """
    if not _is_timm_model(text):
        import timm

        raise argparse.ArgumentTypeError(f"unknown timm model {text!r}{did_you_mean(text, timm.list_models())}")
    return text


def toolkit_backbone(text: str) -> str:
    """A ``backbone.name`` of the toolkit: a timm model name or ``auto``.

    Args:
        text: The option's text.

    Returns:
        The name.

    Raises:
        argparse.ArgumentTypeError: If it is neither ``auto`` nor a timm model.
    """
    return text if text == "auto" else timm_backbone(text)


def timm_backbones(text: str) -> list[str]:
    """Comma-separated :func:`toolkit_backbone` names.

    Args:
        text: The option's text.

    Returns:
        The names, in the order given.

    Raises:
        argparse.ArgumentTypeError: Naming the first unknown model.
    """
    return [toolkit_backbone(name.strip()) for name in text.split(",")]


def task_names() -> list[str]:
    """The registered pretext tasks' names."""
    from ssl_toolkit.pretext import TASKS

    return TASKS.names()


def data_name(text: str) -> str:
    """A ``data.name``: a registered dataset (``digits``, ``fashion-mnist``, ...) or an existing folder.

    Args:
        text: The option's text.

    Returns:
        The name.

    Raises:
        argparse.ArgumentTypeError: If it is neither a registered dataset nor a folder.
    """
    from ssl_toolkit.data.sources import source_names

    known = source_names()
    if text in known:
        return text
    path = Path(text).expanduser()
    if path.is_dir():
        return text
    if path.exists():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a dataset or a folder")
    raise argparse.ArgumentTypeError(f"no dataset or folder {text!r}{did_you_mean(text, known)}; datasets: {', '.join(known)}")


def existing_folder(text: str) -> Path:
    """A folder that exists.

    Args:
        text: The option's text.

    Returns:
        The folder's path.

    Raises:
        argparse.ArgumentTypeError: If there is no folder at ``text``.
    """
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no folder {text}")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return path


def output_problem(path: str | os.PathLike[str], folder: bool = False, empty: bool = False) -> str | None:
    """Why ``path`` cannot be written as an output file (or folder), or ``None`` if it can.

    Nothing is created: the nearest existing folder above ``path`` is probed by making an
    empty folder in it and removing it at once.

    Args:
        path: The output's path.
        folder: The output is a folder (made if missing) instead of a file.
        empty: With ``folder``: an existing folder must be empty.

    Returns:
        The problem, starting with ``path``, or ``None``.
    """
    p = Path(path).expanduser().absolute()
    if p.exists() or p.is_symlink():
        if folder and not p.is_dir():
            return f"{path} is a file, not a folder"
        if not folder and p.is_dir():
            return f"{path} is a folder, not a file"
        if folder and empty and any(p.iterdir()):
            return f"{path} is not empty; give a new or empty folder"
        if not folder and not os.access(p, os.W_OK):
            return f"{path}: the file is not writable"
    parent = p if folder and p.is_dir() else p.parent
    while not parent.exists() and not parent.is_symlink():
        parent = parent.parent
    if not parent.is_dir():
        return f"{path}: {parent} is a file, not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=parent))
    except OSError as e:
        return f"{path}: cannot write in {parent}: {e.strerror or e}"
    return None


def output_file(text: str) -> Path:
    """A path a results file can be written to (its missing folders made later, by the script).

    Args:
        text: The option's text.

    Returns:
        The path.

    Raises:
        argparse.ArgumentTypeError: If the file could not be written (see :func:`output_problem`).
    """
    problem = output_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return Path(text)


def output_folder(text: str) -> Path:
    """A path an output folder can be made at (or an existing folder that can be written in).

    Args:
        text: The option's text.

    Returns:
        The path.

    Raises:
        argparse.ArgumentTypeError: If the folder could not be made or written in.
    """
    problem = output_problem(text, folder=True)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return Path(text)


def new_output_folder(text: str) -> Path:
    """Like :func:`output_folder`, and an existing folder must be empty (nothing is overwritten).

    Args:
        text: The option's text.

    Returns:
        The path.

    Raises:
        argparse.ArgumentTypeError: If the folder is not empty, or could not be made or written in.
    """
    problem = output_problem(text, folder=True, empty=True)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return Path(text)


def check_accelerator(ap: argparse.ArgumentParser, accelerator: str) -> None:
    """Refuse ``--accelerator gpu`` on a machine without a CUDA device (``ap.error``: exit 2).

    Args:
        ap: The script's parser.
        accelerator: The ``--accelerator`` value (one of :data:`ACCELERATORS`).
    """
    if accelerator == "gpu":
        import torch

        if not torch.cuda.is_available():
            ap.error("--accelerator gpu: no CUDA device on this machine")
