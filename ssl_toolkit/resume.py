"""What ``ssl pretrain --resume RUN`` may change, and whether a finished run has anything left to do.

A resumed run keeps the saved ``config.yaml``. Only the options that say how long to train,
how often to save and how to show progress may change; asking for any other change is an
error, since the checkpoint was trained under the saved values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssl_toolkit.config import PretrainConfig, validate
from ssl_toolkit.errors import UserError
from ssl_toolkit.run_folder import RunFolder

RESUMABLE = (
    "trainer.epochs",
    "trainer.max_steps",
    "trainer.max_minutes",
    "trainer.checkpoint_every_minutes",
    "trainer.checkpoint_every_n_steps",
    "trainer.progress_bar",
    "trainer.progress_every_n_steps",
    "trainer.log_every_n_steps",
    "trainer.logger",
    "name",  # used when the run registers its backbone, at its end
)


def _leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "task_config" and key != "kwargs":
            out.update(_leaves(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


#: The settings a run records as absolute paths (:func:`ssl_toolkit.data.sources.recorded_paths`, ``init_from``).
RECORDED_ABSOLUTE = ("init_from", "data.name", "data.path", "data.labels")


def _same_path(saved: Any, asked: Any) -> bool:
    """Whether ``asked`` names the existing folder or file ``saved`` records."""
    if not isinstance(saved, str) or not isinstance(asked, str) or not Path(asked).expanduser().exists():
        return False
    return Path(asked).expanduser().resolve() == Path(saved).expanduser().resolve()


def resume_config(folder: RunFolder, changes: dict[str, Any] | None) -> tuple[PretrainConfig, list[str]]:
    """The saved config with the allowed ``changes`` applied; returns it and the keys that changed.

    Raises:
        UserError: ``changes`` touch anything outside :data:`RESUMABLE`.
    """
    cfg = folder.read_run_config()
    current = cfg.model_dump(mode="json")
    changed: list[str] = []
    for key, value in _leaves(dict(changes or {})).items():
        old = _get(current, key)
        if old == value or (key in RECORDED_ABSOLUTE and _same_path(old, value)):  # saved absolute, asked as typed
            continue
        if key not in RESUMABLE:
            was = "unset" if old is _MISSING else repr(old)
            raise UserError(
                f"--resume cannot change {key} (saved {was}, asked {value!r}); only {', '.join(k.split('.', 1)[-1] for k in RESUMABLE)} may change"
            )
        changed.append(key)
    if not changed:
        return cfg, []
    merged = cfg.model_dump(mode="json")
    for key in changed:
        *section, field = key.split(".", 1)
        (merged[section[0]] if section else merged)[field] = _get(dict(changes or {}), key)
    return validate(PretrainConfig, merged, what="--resume"), changed


def fixed_settings(resolved: dict[str, Any]) -> dict[str, Any]:
    """The dotted settings of a resolved config that a resume may not change (all but :data:`RESUMABLE`)."""
    return {k: v for k, v in _leaves(resolved).items() if k not in RESUMABLE}


def check_unedited(folder: RunFolder, recorded: str | None) -> None:
    """Refuse a resume whose ``config.yaml`` differs from the settings its checkpoint was trained with.

    ``recorded`` is :class:`~ssl_toolkit.callbacks.ConfigRecord`'s text from ``last.ckpt``
    (``None``: a checkpoint from before it was kept, not checked). A setting the checkpoint
    does not name (one a later version added) is not compared.
    """
    import json

    if recorded is None:
        return
    try:
        was = json.loads(recorded)
    except ValueError:
        was = None
    if not isinstance(was, dict):
        raise UserError(f"cannot resume from {folder.last_ckpt}: the settings it keeps are damaged (not a JSON object)")
    now = json.loads(json.dumps(fixed_settings(folder.read_config()), default=str))
    for key, value in was.items():
        if now.get(key, _MISSING) != value:
            shown = "absent" if key not in now else repr(now[key])
            raise UserError(
                f"cannot resume {folder}: its config.yaml has {key} {shown}, but its checkpoint was trained with {value!r} "
                f"(was config.yaml edited?); put the value back, or start a new run from its weights with --init-from {folder}"
            )


def finished_state(folder: RunFolder) -> dict[str, Any] | None:
    """``meta.json`` of a finished run (``None`` while the run is unfinished).

    Raises:
        UserError: The run finished but its ``meta.json`` is unreadable or not valid backbone
            metadata with a step count (resuming it would train nothing and rewrite it).
    """
    if not folder.is_finished():
        return None
    from ssl_toolkit.backbone_files import read_meta

    meta = read_meta(folder.meta)
    if not isinstance(meta.get("steps"), int):
        raise UserError(f"{folder.meta} is not valid run metadata: steps: missing (the run finished; its metadata cannot be resumed from)")
    return meta


def trained_epochs(folder: RunFolder, meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with ``epochs`` as its ``last.ckpt`` counts them: epochs trained to their last batch.

    Runs written before that rule recorded an epoch that ``trainer.max_steps`` cut short as
    trained; resumed with more steps they would be taken as finished. Without a readable
    checkpoint the metadata stands.
    """
    if not folder.last_ckpt.is_file():
        return meta
    try:
        done, _, _ = folder.check_checkpoint()
    except UserError:
        return meta
    return {**meta, "epochs": min(int(meta.get("epochs") or 0), done)}


def limits_reached(cfg: PretrainConfig, meta: dict[str, Any]) -> list[str]:
    """The limits of ``cfg`` (``trainer.epochs``, ``trainer.max_steps``) that the finished run ``meta`` describes has reached."""
    epochs, steps = int(meta.get("epochs") or 0), int(meta["steps"])
    reached = ["trainer.epochs"] if cfg.trainer.epochs <= epochs else []
    return reached + (["trainer.max_steps"] if 0 <= cfg.trainer.max_steps <= steps else [])
