"""The experiment logger a run adds besides ``metrics.csv`` (``trainer.logger``): Lightning's own.

- ``tensorboard``: events in ``RUN/tensorboard``.
- ``mlflow``: runs in ``RUN/mlruns`` unless ``MLFLOW_TRACKING_URI`` names another store (a file
  store is opted into with ``MLFLOW_ALLOW_FILE_STORE``, which MLflow 3 asks for); experiment
  ``$MLFLOW_EXPERIMENT_NAME`` or ``ssl-toolkit``.
- ``wandb``: files in ``RUN/wandb``; project ``$WANDB_PROJECT`` or ``ssl-toolkit``; quiet
  (``WANDB_SILENT``) when the run is (``--quiet``, or stderr not a terminal) unless set.

Each logger gets the run's resolved config as its hyperparameters, flattened to dotted keys,
and a W&B run is finished when the training ends (so one process can train several runs).
The MLflow and W&B run ids are kept in ``RUN/logger.json``, so a ``--resume`` logs on into the
same run instead of starting a second one beside it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ssl_toolkit.atomic import atomic_write_json
from ssl_toolkit.errors import UserError
from ssl_toolkit.ranks import is_primary_process

PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}
RECORD = "logger.json"
PROJECT = "ssl-toolkit"
#: Environment variables set while a run logs (MLflow sets its tracking URI), and a log level
#: it quiets: the Python API restores them afterwards.
ENV = ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_TRACKING_URI", "WANDB_SILENT")
QUIETED = "lightning.pytorch.loggers.mlflow"


class LoggerRun(BaseModel):
    """``RUN/logger.json``: the logger run a resume continues."""

    model_config = ConfigDict(extra="forbid")

    logger: Literal["wandb", "mlflow"]
    run_id: str = Field(min_length=1, max_length=256)
    where: str = Field(max_length=4096)  # MLflow's tracking URI, W&B's project: another one is another run


def check_logger(name: str) -> None:
    """Refuse a ``--logger`` whose package is not installed, naming the extra that installs it."""
    packages = PACKAGES.get(name, ())
    if packages and not any(importlib.util.find_spec(p) is not None for p in packages):
        raise UserError(f"--logger {name} needs the {packages[0]} package: pip install 'ssl-toolkit[{name}]'")


def experiment_logger(name: str, run_dir: Path, resume: bool, quiet: bool) -> Any:
    """Lightning's logger ``name`` writing into ``run_dir`` (``None`` for ``csv``), started.

    A resume continues the run recorded in ``RUN/logger.json`` when it is the same logger
    logging to the same place. A logger that cannot start is one line naming it.
    """
    if name == "csv":
        return None
    try:
        return _start(name, run_dir.resolve(), resume, quiet)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001  (the logger's own package: a store it refuses, a service it cannot reach)
        reason = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"--logger {name} could not start: {type(e).__name__}: {reason[:1000]}") from None


def _start(name: str, run_dir: Path, resume: bool, quiet: bool) -> Any:
    if name == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)
    if name == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").as_uri()
        if uri.startswith("file:") or "://" not in uri:  # a file store, the run's own or one asked for: MLflow 3 refuses it unless told
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        logging.getLogger(QUIETED).setLevel(logging.ERROR)  # "Experiment ... not found. Creating it."
        run_id = _continued(run_dir, "mlflow", uri) if resume else None
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
        mlflow_logger = MLFlowLogger(experiment_name=experiment, run_name=run_dir.name, tracking_uri=uri, run_id=run_id)
        if is_primary_process():  # the other DDP processes log nothing
            _record(run_dir, LoggerRun(logger="mlflow", run_id=str(mlflow_logger.run_id), where=uri))  # starts the run
        return mlflow_logger
    if name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        if quiet or not sys.stderr.isatty():
            os.environ.setdefault("WANDB_SILENT", "true")
        project = os.environ.get("WANDB_PROJECT") or PROJECT
        run_id = _continued(run_dir, "wandb", project) if resume else None
        wandb_logger = WandbLogger(name=run_dir.name, save_dir=str(run_dir), project=project, id=run_id)
        init = getattr(wandb_logger, "_wandb_init", {})
        if init.get("anonymous", "unset") is None:  # Lightning passes anonymous=None, which W&B warns has no effect
            del init["anonymous"]
        if is_primary_process():
            _record(run_dir, LoggerRun(logger="wandb", run_id=wandb_logger.experiment.id, where=project))  # starts the run
        return wandb_logger
    raise UserError(f"unknown logger '{name}'")  # the config's Literal refuses it first


def _continued(run_dir: Path, logger: str, where: str) -> str | None:
    """The run id ``RUN/logger.json`` records for this logger and place; ``None`` (a new run) otherwise."""
    path = run_dir / RECORD
    if not path.is_file():
        return None
    try:
        record = LoggerRun.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        print(f"warning: {path} is unreadable or not a logger record; --logger {logger} starts a new run", file=sys.stderr, flush=True)
        return None
    return record.run_id if (record.logger, record.where) == (logger, where) else None


def _record(run_dir: Path, record: LoggerRun) -> None:
    try:
        atomic_write_json(run_dir / RECORD, record.model_dump())
    except OSError as e:
        raise UserError(f"cannot write {run_dir / RECORD}: {e.strerror or e}") from None


def flat_config(resolved: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"trainer.lr": 0.1, ...}``: numbers, booleans and text as they are, lists as JSON."""
    flat: dict[str, Any] = {}
    for key, value in resolved.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, f"{name}."))
        elif isinstance(value, bool | int | float | str) or value is None:
            flat[name] = "null" if value is None else value
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


def log_config(loggers: list[Any], resolved: dict[str, Any]) -> None:
    """Give each experiment logger the run's resolved config as its hyperparameters.

    MLflow parameters cannot change within a run, and a resume may change the epochs: a
    continued MLflow run keeps the parameters it started with.
    """
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger

    if not is_primary_process():
        return
    params = flat_config(resolved)
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            continue
        if isinstance(logger, MLFlowLogger) and logger.experiment.get_run(logger.run_id).data.params:
            continue
        logger.log_hyperparams(params)


def finish_loggers(loggers: list[Any]) -> None:
    """End the W&B run the training logged to (Lightning leaves it open), so it is written out and a later run starts its own."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        run = getattr(logger, "_experiment", None) if isinstance(logger, WandbLogger) else None
        if run is not None and callable(getattr(run, "finish", None)):
            run.finish()
