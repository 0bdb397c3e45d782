"""``probe()``: carry a backbone to supervised classification and score it.

Loads the backbone (run folder, backbone file, or a random-init baseline), loads labelled
data at the backbone's image size, takes the label fraction, runs the evaluator named by
``mode``, and writes ``probes/<dataset>-<mode>-<fraction>.json`` into the run folder.
"""

from __future__ import annotations

import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ssl_toolkit.api import Flag, caller_terms, config_fields, public
from ssl_toolkit.atomic import atomic_write_text
from ssl_toolkit.backbones import BackboneSpec, create_backbone, resnet_small_max_size, resolve_auto
from ssl_toolkit.config import BackboneConfig, DataConfig, ProbeConfig, validate
from ssl_toolkit.data.sources import DataSource, load_source
from ssl_toolkit.errors import UserError
from ssl_toolkit.eval.features import Preprocess
from ssl_toolkit.eval.metrics import classification_report
from ssl_toolkit.evaluators import EVALUATORS, EvalContext


def label_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Seeded subset that keeps every label present (:func:`~ssl_toolkit.evaluators.targets.label_subset`)."""
    from ssl_toolkit.evaluators.targets import label_subset as subset

    return subset(labels, fraction, seed)


def load_target(
    target: str | Path | None, random_init: bool, backbone: BackboneConfig, cfg: ProbeConfig
) -> tuple[torch.nn.Module, dict[str, Any], Path | None]:
    """The backbone to evaluate, its metadata, and the run folder to write results into (if any)."""
    if random_init:
        torch.manual_seed(cfg.seed)
        from ssl_toolkit.data.processing import Processing, processed_stats

        probe_source = load_source(cfg.data)
        processing = Processing.from_config(cfg.data)  # the baseline is fed as data.color_space/equalize/normalize say
        channels, mean, std = processed_stats(processing, probe_source)
        backbone = resolve_auto(backbone, probe_source.image_size, cfg.accelerator)  # the pretraining's rule
        model, spec = create_backbone(backbone, channels, probe_source.image_size, resnet_small_max_size(cfg.accelerator))
        meta = {
            "task": "random-init",
            "backbone": spec.to_dict(),
            "in_chans": channels,
            "image_size": probe_source.image_size,
            "mean": list(mean),
            "std": list(std),
            "processing": processing.to_dict(),
        }
        return model.eval(), meta, None
    if target is None:
        raise UserError(
            caller_terms(
                "probe needs a TARGET (run folder, backbone file or library name) or --random-init",
                "probe() needs a target (run folder, backbone file or library name) or random_init=True",
            )
        )
    from ssl_toolkit.library import load_backbone_any

    model, meta, folder = load_backbone_any(target)
    return model, meta, folder


@public
def probe(
    target: str | Path | None = None,
    config: ProbeConfig | dict[str, Any] | str | Path | None = None,
    random_init: Flag = False,
    backbone: str | BackboneConfig | dict[str, Any] = "auto",
    data: str | Path | dict[str, Any] | DataConfig | None = None,
) -> dict[str, Any]:
    """Evaluate a backbone on labelled data.

    Args:
        target: Run folder, backbone file or checkpoint-library name.
        config: A :class:`ProbeConfig`, a dict of its fields, or a YAML file of them (as
            ``--config``). Without ``data.name`` the
            data is the one the backbone was pretrained on (its run's ``data`` section, with
            any other ``data`` fields given here on top), as for ``embed`` and ``report``;
            with ``random_init``, ``digits``.
        random_init: Evaluate an untrained ``backbone`` instead (the baseline).
        backbone: The untrained backbone for ``random_init``: a timm name, ``auto`` (the
            network a pretraining's ``backbone.name: auto`` builds for the data and the
            accelerator), or a :class:`BackboneConfig` (or dict of its fields) to choose the
            stem as a pretraining config does.
        data: As ``embed``'s and ``report``'s (``--data``): a dataset name or folder, or a
            dict of :class:`DataConfig` fields, instead of the config's ``data`` section.

    Returns:
        The result: ``mode``, ``label_fraction``, ``metric`` (the headline metric's key),
        ``n_train``, ``n_test``, ``seconds``, ``seed``, ``settings`` and evaluator facts, with
        the metrics that fit the targets (``docs/evaluators.md``): ``top1``, ``top5``,
        ``per_class_acc`` and ``confusion`` for multiclass data; ``roc_auc``, ``accuracy``
        (also ``top1``), ``f1``, ``precision``, ``recall`` and ``threshold`` for two classes;
        ``mAP``, ``per_class_ap``, ``micro_f1``, ``macro_f1`` and ``thresholds`` for
        multi-label data (``top1`` ``None``).
    """
    if random_init and target is not None:
        raise UserError(f"give a target or random_init=True, not both ({target} would not be evaluated)")
    if not random_init and backbone != "auto":
        raise UserError("backbone= chooses the random_init=True baseline; a target's own backbone is evaluated")
    if data is not None:
        config = _with_data(config, data)
    cfg = config if isinstance(config, ProbeConfig) else validate(ProbeConfig, config_fields(config))
    evaluator = EVALUATORS.get(cfg.mode)(cfg)  # validates the evaluator's own settings
    from ssl_toolkit.config import TrainerConfig
    from ssl_toolkit.trainer import check_lightning_options

    check_lightning_options(TrainerConfig(accelerator=cfg.accelerator, precision=cfg.precision), ("accelerator", "precision"))  # every mode
    start = time.time()
    if isinstance(backbone, str):
        backbone = BackboneConfig(name=backbone)
    elif not isinstance(backbone, BackboneConfig):
        backbone = validate(BackboneConfig, dict(backbone))
    model, meta, run_folder = load_target(target, random_init, backbone, cfg)
    if run_folder is not None:
        check_recordable(run_folder, meta)
    data_cfg = cfg.data
    if "name" not in cfg.data.model_fields_set and not random_init:  # as embed and report: the pretraining data
        from ssl_toolkit.eval.embed import data_config, data_needed, pretraining_data

        pretrained = pretraining_data(run_folder, meta)
        if pretrained is None:
            raise UserError(data_needed(target, meta))
        data_cfg = data_config(pretrained).model_copy(update={k: getattr(cfg.data, k) for k in cfg.data.model_fields_set})
    if not random_init:
        from ssl_toolkit.eval.embed import check_recorded_input

        check_recorded_input(data_cfg, meta)
    data_cfg = data_cfg.model_copy(update={"image_size": meta["image_size"]})
    source: DataSource = load_source(data_cfg)
    from ssl_toolkit.eval.embed import check_unreadable, warn_gray_for_colour

    check_unreadable(source, data_cfg.strict)
    if not random_init:
        warn_gray_for_colour(source, meta)
    if not source.labelled:
        raise UserError(f"probe needs labelled data; {source.name} has no classes")
    if len(source.test) == 0:
        raise UserError(f"probe needs a test split; {source.name} has none")
    if source.num_classes < 2:
        print(
            f"warning: {source.name} has a single class; every prediction is that class, so top-1 says nothing", file=sys.stderr, flush=True
        )
    if run_folder is not None:
        from ssl_toolkit.library import probe_key

        check_record_file(run_folder, probe_key(source.name, cfg.mode, cfg.label_fraction))
    pre = Preprocess.from_meta(meta)
    train_idx = label_subset(source.train.labels, cfg.label_fraction, cfg.seed)
    warn_untrained_classes(source)
    ctx = EvalContext(model=model, meta=meta, source=source, pre=pre, train_idx=train_idx, cfg=cfg)
    scores, facts = evaluation_output(cfg.mode, evaluator.evaluate(ctx))
    check_scores(cfg.mode, scores, len(source.test), source.num_classes if source.target_kind == "multiclass" else None)
    if source.target_kind == "binary":
        scores = positive_scores(cfg.mode, scores)
    check_facts(cfg.mode, facts)
    report = evaluation_report(source.target_kind, scores, source.test.labels, source.num_classes, facts.get("thresholds"))
    result = {
        "mode": cfg.mode,
        "label_fraction": cfg.label_fraction,
        **report,
        "n_train": int(len(train_idx)),
        "n_test": len(source.test),
        "num_classes": source.num_classes,
        "target_kind": source.target_kind,
        "classes": source.classes,
        **({"positive_class": source.classes[1]} if source.target_kind == "binary" and source.classes else {}),  # label 1
        "dataset": source.name,
        "backbone": meta["backbone"]["timm_name"],
        "small_stem": bool(meta["backbone"].get("small_stem")),
        "stem_pool": BackboneSpec.from_dict(meta["backbone"]).stem_pool,
        "task": meta.get("task"),
        "random_init": random_init,
        "seed": cfg.seed,
        "settings": evaluator.settings.model_dump(mode="json"),  # the evaluator's own, as evaluator_config takes them
        "seconds": round(time.time() - start, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    clash = sorted(k for k, v in facts.items() if k in result and result[k] != v)
    if clash:
        raise UserError(
            f"evaluator '{cfg.mode}' returned facts named {', '.join(clash)}, which would replace the measured figures; rename them"
        )
    result = {**result, **facts}
    if run_folder is not None:
        try:
            record_probe(run_folder, result)
        except OSError as e:  # a full disk, say: the figure measured is said in the error, not lost with it
            from ssl_toolkit.outputs import describe_os_error

            raise UserError(f"the result ({headline(result)}) could not be recorded: {describe_os_error(e)}") from None
    return result


def _with_data(config: ProbeConfig | dict[str, Any] | str | Path | None, data: str | Path | dict[str, Any] | DataConfig) -> dict[str, Any]:
    """The config's fields with ``data=`` as its ``data`` section (a config that has one too is refused)."""
    fields = config.model_dump(exclude_unset=True) if isinstance(config, ProbeConfig) else config_fields(config)
    if fields.get("data"):
        raise UserError("probe() was given data= and a config with a data section; give the data once")
    if isinstance(data, DataConfig):
        section: dict[str, Any] = data.model_dump(exclude_unset=True)
    elif isinstance(data, dict):
        section = dict(data)
    else:
        section = {"name": str(data)}
    return {**fields, "data": section}


def headline(result: dict[str, Any]) -> str:
    """The result's headline metric as one phrase, e.g. ``top-1 83.40% (linear, 1797 test images)``."""
    from ssl_toolkit.eval.target_rows import metric_text

    metric = result.get("metric") or "top1"
    return f"{metric_text(metric, result.get(metric))} ({result['mode']}, {result['n_test']} test images)"


def warn_untrained_classes(source: DataSource) -> None:
    """A warning line naming the classes of the test split that the training split never shows (no evaluator can
    predict them), and one naming the classes the test split never shows (the scores say nothing of them)."""
    train, test = source.train.labels, source.test.labels
    k = source.num_classes
    if source.target_kind == "multilabel":
        in_train, in_test = train.sum(0) > 0, test.sum(0) > 0  # (K,)
    else:
        in_train, in_test = torch.bincount(train.long(), minlength=k)[:k] > 0, torch.bincount(test.long(), minlength=k)[:k] > 0
    classes = source.classes or []

    def names(mask: torch.Tensor) -> str:
        return ", ".join(str(classes[c]) if c < len(classes) else str(c) for c in mask.nonzero().view(-1).tolist())

    if bool((in_test & ~in_train).any()):
        print(
            f"warning: {source.name}: class(es) {names(in_test & ~in_train)} have test images but no training image: "
            "no evaluator can learn them",
            file=sys.stderr,
            flush=True,
        )
    if k > 1 and bool((in_train & ~in_test).any()):
        print(
            f"warning: {source.name}: class(es) {names(in_train & ~in_test)} have no test image: the scores say nothing of them "
            + (
                "(their average precision and F1 are undefined; mAP and macro F1 leave them out)"
                if source.target_kind == "multilabel"
                else "(their recall, F1 and ROC-AUC are undefined)"
            ),
            file=sys.stderr,
            flush=True,
        )


def check_recordable(folder: Path, meta: dict[str, Any]) -> None:
    """Refuse, before any work, a folder the result cannot be recorded in (read-only), naming the backbone file that probes without recording."""
    from ssl_toolkit.backbone_files import WEIGHTS
    from ssl_toolkit.library import is_library_entry
    from ssl_toolkit.outputs import check_writable_dir

    try:
        check_writable_dir(folder if is_library_entry(folder) else folder / "probes", "the probe record folder")
    except UserError as e:
        weights = folder / str(meta.get("weights_file") or WEIGHTS)
        hint = f"; give the backbone file {weights} as the target to evaluate without recording" if weights.is_file() else ""
        raise UserError(f"{e}{hint}") from None


def check_record_file(folder: Path, key: str) -> None:
    """Refuse, before the evaluation runs, a folder where the result file goes (the folder's write access is :func:`check_recordable`'s)."""
    record = folder / "probes" / f"{key}.json"
    if record.is_dir():
        raise UserError(f"{record} is a folder where the probe writes its result; move it away first")


def _type_name(value: Any) -> str:
    """``value``'s type for messages: ``list``, ``numpy.ndarray``, ``torch.Tensor``."""
    kind = type(value)
    module = {"builtins": "", "torch": "torch."}.get(kind.__module__, f"{kind.__module__.split('.')[0]}.")
    return f"{module}{kind.__qualname__}"


def evaluation_output(mode: str, output: Any) -> tuple[Any, dict[str, Any]]:
    """What :meth:`Evaluator.evaluate` returned, as ``(scores, facts)``.

    Args:
        mode: The evaluator's registered name.
        output: Its return value.

    Returns:
        The scores (checked by :func:`check_scores`) and the facts (checked by :func:`check_facts`).

    Raises:
        UserError: ``output`` is not a pair whose second item is a dict with string keys.
    """
    if not isinstance(output, (tuple, list)) or len(output) != 2:
        if isinstance(output, (tuple, list)):
            what = f"a {len(output)}-item {_type_name(output)}"
        else:
            what = "None" if output is None else f"a {_type_name(output)}"
        raise UserError(
            f"evaluator '{mode}' returned {what}; evaluate() returns a pair (scores, facts): the test scores and a dict of facts"
        )
    scores, facts = output
    if not isinstance(facts, dict) or not all(isinstance(k, str) for k in facts):
        what = (
            "a dict with keys that are not strings" if isinstance(facts, dict) else ("None" if facts is None else f"a {_type_name(facts)}")
        )
        raise UserError(f"evaluator '{mode}' returned facts as {what}; the facts are a dict with string keys (may be empty)")
    return scores, facts


def check_scores(mode: str, scores: Any, n_test: int, num_classes: int | None) -> None:
    """Refuse, in one line naming the evaluator, scores that are not one finite row per test image (``num_classes`` wide, when given)."""
    if not isinstance(scores, torch.Tensor):
        raise UserError(
            f"evaluator '{mode}' returned scores of type {_type_name(scores)}; it needs a torch.Tensor with one row per test image ({n_test})"
        )
    if scores.dim() not in (1, 2) or len(scores) != n_test:
        raise UserError(f"evaluator '{mode}' returned scores of shape {tuple(scores.shape)}; it needs one row per test image ({n_test})")
    if num_classes is not None and (scores.dim() != 2 or scores.shape[1] != num_classes):
        raise UserError(f"evaluator '{mode}' returned scores of shape {tuple(scores.shape)}; it needs ({n_test}, {num_classes})")
    if not bool(torch.isfinite(scores.float()).all()):
        raise UserError(
            f"evaluator '{mode}' returned scores that are not finite (NaN or inf): training diverged or the evaluator is broken"
        )


def positive_scores(mode: str, scores: torch.Tensor) -> torch.Tensor:
    """Two-class scores as the positive class's probability, ``(N, 1)``.

    The built-in evaluators give that probability (``(N,)`` or ``(N, 1)``); an evaluator
    that scores both classes, as it does any number of classes (``(N, 2)``: a plugin written
    for class scores), gets the softmax's label-1 column, so that 0.5 is its argmax. Read as
    it was, column 0 (label 0) stood for the positive class.
    """
    if scores.dim() == 1 or scores.shape[1] == 1:
        return scores.view(-1, 1)
    if scores.shape[1] == 2:
        return torch.softmax(scores.double(), dim=1)[:, 1:]  # (N, 1): P(label 1)
    raise UserError(
        f"evaluator '{mode}' returned scores of shape {tuple(scores.shape)}; two-class data needs ({len(scores)}, 2) class scores "
        f"or ({len(scores)}, 1) probabilities of label 1"
    )


def check_facts(mode: str, facts: dict[str, Any]) -> None:
    """Refuse, in one line naming the evaluator and the fact, a fact the record cannot hold as standard JSON.

    A fact is a finite number, a string, a boolean, ``None``, or a list, tuple or
    string-keyed dict of those; it is written to ``probes/*.json`` and the ``--json`` line
    as it is.

    Args:
        mode: The evaluator's registered name.
        facts: The facts it returned.

    Raises:
        UserError: A fact (or a value inside one, named by its place) is anything else.
    """
    for name, value in facts.items():
        problem = _json_problem(value, name, set())
        if problem is not None:
            where, why = problem
            raise UserError(
                f"evaluator '{mode}' returned fact '{where}' {why}; facts are recorded as JSON: finite numbers, strings, "
                "booleans, None, and lists or string-keyed dicts of those"
            )


def _json_problem(value: Any, where: str, path: set[int]) -> tuple[str, str] | None:
    """Where inside ``value`` (reached as ``where``) and why it is not standard JSON; ``None`` when it is.

    ``path`` holds the ids of the containers around ``value``, so a container that holds
    itself is found instead of recursing forever.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (where, f"= {value} (not finite)")
    if isinstance(value, (list, tuple, dict)):
        if id(value) in path:
            return where, "contains itself"
        inner = path | {id(value)}
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    return f"{where}[{key!r}]", f"has a key of type {_type_name(key)}, not a string"
                found = _json_problem(item, f"{where}[{json.dumps(key)}]", inner)
                if found is not None:
                    return found
            return None
        for i, item in enumerate(value):
            found = _json_problem(item, f"{where}[{i}]", inner)
            if found is not None:
                return found
        return None
    return where, f"of type {_type_name(value)}"


def result_json(result: dict[str, Any], indent: int | None = None) -> str:
    """A probe result as standard JSON: the record file (``indent=2``) and the ``--json`` line (one line) alike.

    Args:
        result: The result of :func:`probe`, its facts checked by :func:`check_facts`.
        indent: Spaces per level; ``None``: one compact line.

    Raises:
        ValueError: A value is not finite (``allow_nan=False``).
        TypeError: A value is not JSON (no fallback to ``str``).
    """
    return json.dumps(result, indent=indent, separators=None if indent is not None else (",", ":"), allow_nan=False)


def evaluation_report(
    kind: str, scores: torch.Tensor, labels: torch.Tensor, num_classes: int, thresholds: list[float] | None
) -> dict[str, Any]:
    """The metrics that fit the targets: top-1/top-5 (multiclass); ROC-AUC, F1, precision and
    recall (binary); mAP, per-class AP and micro/macro F1 (multi-label). ``top1`` is the
    accuracy of single-label predictions and ``None`` for multi-label data."""
    if kind == "multiclass":
        # float64: kNN votes at a large temperature differ below float32's resolution, and top1_by_k reads them so
        return {"metric": "top1", **classification_report(scores.double(), labels, num_classes)}
    from ssl_toolkit.evaluators.targets import target_report

    rep = target_report(kind, scores, labels, thresholds)
    return {"top1": rep.get("accuracy"), "top5": None, **rep}


SUMMARY_DETAILS = ("seed", "settings", "k", "top1_by_k")  # what a report shows of a probe besides its scores


def record_probe(folder: Path, result: dict[str, Any]) -> None:
    """Write ``probes/<dataset>-<mode>-<fraction>.json`` and add a summary to the folder's ``meta.json``.

    The summary also reaches the twin of the folder: the library entry of a run folder
    (``library_name`` in its metadata), or the run folder of a library entry, which gets the
    full record in ``probes/`` too. Library entries keep only ``backbone.safetensors`` +
    ``meta.json``, so they get the summary only.
    """
    from ssl_toolkit.library import is_library_entry, probe_key, record_probe_summary

    name = probe_key(result["dataset"], result["mode"], result["label_fraction"])
    text = result_json(result, indent=2) + "\n"  # as the --json line: a result that is not JSON fails here, before anything is written
    if not (folder / "meta.json").is_file():  # `ssl checkpoints remove` (or a hand) took it while it was probed
        what = f"the library entry {folder.name}" if is_library_entry(folder) else f"{folder}'s meta.json"
        raise UserError(f"the result ({headline(result)}) could not be recorded: {what} was removed while it was probed")
    if not is_library_entry(folder):
        atomic_write_text(folder / "probes" / f"{name}.json", text)
    summary = {k: result[k] for k in ("mode", "label_fraction", "top1", "top5", "n_train", "n_test", "dataset", "created")}
    summary.update({k: result[k] for k in SUMMARY_DETAILS if result.get(k) is not None})  # the report's details of a library entry
    if result.get("metric") not in (None, "top1"):  # binary / multi-label: the headline metric too
        summary.update(metric=result["metric"], score=result.get(result["metric"]))
    twin = record_probe_summary(folder, name, summary)
    if twin is not None and not is_library_entry(twin):  # probed by its library name: the run folder's own record too
        try:
            atomic_write_text(twin / "probes" / f"{name}.json", text)
        except OSError as e:
            print(f"warning: the result is recorded in {folder}, but not in {twin / 'probes'}: {e.strerror or e}", file=sys.stderr)
