"""The Python API's boundary: its arguments checked as the command line checks its options,
and the caller's process left as it was found.

Every public function (:mod:`ssl_toolkit`'s ``pretrain``, ``probe``, ``embed``, ``report``,
``inspect_data``, ``load_backbone`` and the checkpoint-library functions) is wrapped by
:func:`public`:

- its arguments are validated against its annotations by pydantic's ``validate_call``
  (``Positive`` and ``Seed`` carry the command line's ranges and refuse ``True``/``False``,
  as a config's number fields do); a wrong type or value is a one-line
  :class:`~ssl_toolkit.errors.UserError` naming the argument, before any work;
- the global random generators (``random``, NumPy, torch), the environment variables that
  Lightning's seeding, the run and its logger set, the Lightning loggers' levels, the
  SIGINT/SIGTERM handlers and an unset multiprocessing start method are restored when it
  returns, so a notebook's own random streams go on where they were and Ctrl-C still works
  after an interrupted call;
- an error it raises names the function's arguments and config keys (``out``,
  ``overwrite=True``, ``trainer.backbone_chunk=null in the config``) where the command line's
  names its options (``--out``, ``--overwrite``, ``--set trainer.backbone_chunk=null``): the
  ``ssl`` command runs inside :func:`command_line`, and a call from Python outside it.
"""

from __future__ import annotations

import functools
import inspect
import logging
import multiprocessing
import os
import random
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, ConfigDict, Field, StrictBool, ValidationError, validate_call

from ssl_toolkit.errors import Interrupted, UserError, did_you_mean
from ssl_toolkit.loggers import ENV as LOGGER_ENV
from ssl_toolkit.loggers import QUIETED


def _no_bool(value: Any) -> Any:
    """Refuse ``True``/``False`` for a number (pydantic would take them as 1 and 0), as a config's number fields do."""
    if isinstance(value, bool):
        raise ValueError(f"should be a number, not {str(value).lower()}")
    return value


Positive = Annotated[int, BeforeValidator(_no_bool), Field(ge=1)]
Seed = Annotated[int, BeforeValidator(_no_bool), Field(ge=0, le=2**32 - 1)]
ImageSize = Annotated[int, BeforeValidator(_no_bool), Field(ge=8, le=1024)]  # data.image_size's range
Flag = StrictBool  # True or False: a string such as "no" is refused, not read as true

F = TypeVar("F", bound=Callable[..., Any])

#: Set by Lightning's ``seed_everything``, by a run for its DDP processes, and by a run's experiment logger.
PROCESS_ENV = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "SSL_TOOLKIT_RUN_DIR", *LOGGER_ENV)
LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", QUIETED)

_CALLER: ContextVar[str] = ContextVar("ssl_toolkit_caller", default="python")
#: Options whose Python name is a config key, not an argument of the same name.
_CONFIG_KEYS = {
    "strict": "data.strict",
    "logger": "trainer.logger",
    "augment": "evaluator_config.augment",
    "freeze-stages": "evaluator_config.freeze_stages",
    "image-size": "data.image_size",
}
# the command line's wording, in the order they are rewritten (the resume hint before the bare option)
_PYTHON_TERMS = (
    (re.compile(r"ssl pretrain --resume (\S+)"), lambda m: f"pretrain(resume={m[1]!r})"),
    (re.compile(r"`ssl checkpoints import ([^`]+)`"), lambda m: f"import_checkpoint({m[1]!r})"),
    (re.compile(r"`ssl checkpoints remove ([^`]+)`"), lambda m: f"remove_checkpoint({m[1]!r})"),
    (re.compile(r"`ssl checkpoints list`"), lambda m: "list_checkpoints()"),
    (re.compile(r"(?<![\w/.-])--set (\S+?)(?=[;,)]|\s|$)"), lambda m: f"{m[1]} in the config"),
    (re.compile(r"(?<![\w/.-])--overwrite\b"), lambda m: "overwrite=True"),
    # an option followed by its value (a path, a quoted string, a number) becomes name=value
    (re.compile(r"(?<![\w/.-])--([a-z][a-z-]*)( (?=[/~.'\"\d]|[^\s/]*/))?"), lambda m: python_name(m[1]) + ("=" if m[2] else "")),
)


def public(func: F) -> F:
    """Check ``func``'s arguments against its annotations and keep the caller's global state (module docstring)."""
    checked = validate_call(config=ConfigDict(arbitrary_types_allowed=True))(func)
    parameters = inspect.signature(func).parameters

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        with kept_global_state():
            try:
                return checked(*args, **kwargs)
            except ValidationError as e:
                if e.title != func.__name__:  # raised inside the function, not by the argument check
                    raise
                raise UserError(argument_error(func.__name__, e, parameters)) from None
            except (UserError, Interrupted) as e:
                if _CALLER.get() == "python" and e.args:
                    e.args = (in_python_terms(str(e.args[0]), given_text((args, kwargs))), *e.args[1:])
                raise

    return call  # type: ignore[return-value]


@contextmanager
def command_line() -> Iterator[None]:
    """Inside, errors keep the command line's option names (``--out``); the ``ssl`` command runs in it."""
    token = _CALLER.set("command line")
    try:
        yield
    finally:
        _CALLER.reset(token)


def caller_terms(command_line: str, python: str) -> str:
    """The wording for whoever called: ``command_line`` inside :func:`command_line`, else ``python``.

    For notes and warnings that name a setting (errors are translated by :func:`public`).
    """
    return command_line if _CALLER.get() == "command line" else python


def python_name(option: str) -> str:
    """The argument or config key of the command line's ``--option``."""
    return _CONFIG_KEYS.get(option, option.replace("-", "_"))


def in_python_terms(message: str, given: Iterable[str] = ()) -> str:
    """``message`` with the command line's options named as the Python API's arguments and config keys.

    Text the caller gave (``given``: a path, a config key or value) is quoted as given, even
    where it holds something shaped like an option (``/data/x --out y``).
    """
    kept: list[str] = []

    def keep(m: re.Match[str]) -> str:
        kept.append(m[0])
        return f"\u27e6{len(kept) - 1}\u27e7"  # printable, so a repr() of it in a rewrite keeps it as it is

    protect = sorted({t for t in given if "--" in t or "ssl " in t}, key=len, reverse=True)
    if protect:
        message = re.sub("|".join(map(re.escape, protect)), keep, message)
    for pattern, words in _PYTHON_TERMS:
        message = pattern.sub(words, message)
    return re.sub("\u27e6(\\d+)\u27e7", lambda m: kept[int(m[1])] if int(m[1]) < len(kept) else m[0], message)


def given_text(value: Any, depth: int = 0) -> set[str]:
    """Every string in an API call's arguments: paths (as given and as resolved), config keys and values."""
    if depth > 20:
        return set()
    if isinstance(value, str | os.PathLike):
        text = os.fspath(value)
        if not isinstance(text, str):
            return set()
        found = {text}
        try:
            found.add(str(Path(text).expanduser().absolute()))
        except (OSError, RuntimeError, ValueError):  # no home directory, a NUL in the text
            pass
        return found
    if hasattr(value, "model_dump"):  # a config object
        value = value.model_dump()
    if isinstance(value, Mapping):
        return set().union(*(given_text(k, depth + 1) | given_text(v, depth + 1) for k, v in value.items()))
    if isinstance(value, list | tuple | set):
        return set().union(*(given_text(v, depth + 1) for v in value))
    return set()


def argument_error(name: str, e: ValidationError, parameters: Mapping[str, inspect.Parameter]) -> str:
    """One line for the first argument ``e`` refuses: its name, what it should be, what it got."""
    order = list(parameters)
    err = e.errors()[0]
    where = err["loc"][0] if err["loc"] else ""
    arg = order[where] if isinstance(where, int) and where < len(order) else str(where)
    same = [x for x in e.errors() if x["loc"] and x["loc"][0] == where]
    if err["type"] == "unexpected_keyword_argument":  # a misspelt argument, as click hints at a misspelt option
        return f"{name}(): {err['msg'].lower()}: {arg}{did_you_mean(arg, order)}"
    if err["type"] == "unexpected_positional_argument":  # its location is its index, past the last argument
        positional = [p for p in parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return f"{name}(): takes at most {len(positional)} positional arguments; {err.get('input')!r} is one too many"
    if err["type"] in ("missing_argument", "multiple_argument_values"):
        return f"{name}(): {err['msg'].lower()}: {arg}"
    if len(same) > 1:  # a union: say what the argument may be, and what it was (not a part of it)
        annotation = parameters[arg].annotation if arg in parameters else "another type"
        given = min(same, key=lambda x: len(x["loc"])).get("input")
        keys = [x["loc"][-2] for x in same if x["loc"][-1:] == ("[key]",)]  # a mapping with a key that is not a string
        why = f": its key {keys[0]!r} is not a string" if keys and isinstance(given, Mapping) else ""
        shown = repr(given) if len(repr(given)) <= 80 else repr(given)[:77] + "..."  # a whole config is too long to print
        return f"{name}(): {arg} should be {annotation} (got {shown}{why})"
    return f"{name}(): {arg}: {err['msg'].removeprefix('Value error, ')} (got {err.get('input')!r})"


def config_fields(config: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    """A config's fields from a mapping, or from a YAML file as ``--config`` reads it."""
    if config is None:
        return {}
    if isinstance(config, str | os.PathLike):
        from ssl_toolkit.config import load_yaml

        return load_yaml(Path(config))
    return dict(config)


@contextmanager
def kept_global_state() -> Iterator[None]:
    """Restore the random generators, the run's environment variables, Lightning's log levels and the signal handlers on exit."""
    np, torch = sys.modules.get("numpy"), sys.modules.get("torch")  # generators the caller has not imported are not the caller's
    py = random.getstate()
    npy = np.random.get_state() if np is not None else None
    cpu = torch.random.get_rng_state() if torch is not None else None
    cuda = torch.cuda.get_rng_state_all() if torch is not None and torch.cuda.is_initialized() else None
    env = {k: os.environ.get(k) for k in PROCESS_ENV}
    levels = {n: logging.getLogger(n).level for n in LOGGERS}
    main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    start_method = multiprocessing.get_start_method(allow_none=True)  # Lightning's worker check fixes it when unset
    try:
        yield
    finally:
        for sig, handler in handlers.items():  # Lightning ignores Ctrl-C while it shuts down after one
            if handler is not None:
                signal.signal(sig, handler)
        random.setstate(py)
        if np is not None:
            np.random.set_state(npy)
        if torch is not None:
            torch.random.set_rng_state(cpu)
        if torch is not None and cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
        if start_method is None and multiprocessing.get_start_method(allow_none=True) is not None:
            multiprocessing.set_start_method(None, force=True)  # unset again: the caller may still choose one
