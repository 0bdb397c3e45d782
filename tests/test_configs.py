"""Every shipped YAML config validates against its typed model, task configs included."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ssl_toolkit.config import PretrainConfig, ProbeConfig, apply_overrides, load_yaml, validate
from ssl_toolkit.errors import UserError
from ssl_toolkit.evaluators import EVALUATORS
from ssl_toolkit.evaluators.base import TRAINING_SETTINGS
from ssl_toolkit.pretext import TASKS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "pretrain").glob("*.yaml")), ids=lambda p: p.stem)
def test_pretrain_configs_validate(path):
    cfg = validate(PretrainConfig, load_yaml(path))
    task_cls = TASKS.get(cfg.task)
    validate(task_cls.Config, cfg.task_config)
    if path.stem != "quickstart":  # a task's page, or a recipe for it named TASK-...
        assert path.stem == cfg.task or path.stem.startswith(f"{cfg.task}-")


def test_every_built_in_task_has_a_doc_page():
    """A task is its module plus its doc page; an example config is optional (validated above when present)."""
    built_in = [n for n in TASKS.names() if TASKS.get(n).__module__.startswith("ssl_toolkit.pretext.")]
    assert "rotation" in built_in and "simclr" in built_in
    for name in built_in:
        assert (CONFIGS.parent / "docs" / "pretext" / f"{name}.md").is_file(), name


@pytest.mark.parametrize("path", sorted((CONFIGS / "probe").glob("*.yaml")), ids=lambda p: p.stem)
def test_probe_configs_validate(path):
    raw = load_yaml(path)
    cfg = validate(ProbeConfig, raw)
    assert cfg.mode in EVALUATORS and path.stem == cfg.mode
    # every default spelled out, but no data: a probe reads the backbone's own data unless told
    evaluator = EVALUATORS.get(cfg.mode)
    refused = set() if evaluator.reads_training_settings else set(TRAINING_SETTINGS)
    own = set(evaluator.Config.model_fields)
    assert set(raw) == set(ProbeConfig.model_fields) - {"data"} - refused - (set() if own else {"evaluator_config"})
    assert set(raw.get("evaluator_config", {})) == own


def test_overrides_reach_nested_keys_and_unknown_keys_get_a_hint():
    data = apply_overrides({}, ["trainer.lr=0.5", "data.name=synthetic", "task_config.views.flip_p=0"])
    cfg = validate(PretrainConfig, data)
    assert cfg.trainer.lr == 0.5 and cfg.data.name == "synthetic" and cfg.task_config == {"views": {"flip_p": 0}}
    with pytest.raises(UserError, match=r"unknown key 'data.imagesize' \(did you mean 'data.image_size'\?\)"):
        validate(PretrainConfig, apply_overrides({}, ["data.imagesize=32"]))


def test_every_config_key_is_documented():
    """Each key of the config models appears, in backquotes, on the page that documents its section."""
    from ssl_toolkit.config import BackboneConfig, DataConfig, TrainerConfig
    from ssl_toolkit.data.augment import ViewConfig
    from ssl_toolkit.inspection.config import InspectConfig

    docs = CONFIGS.parent / "docs"
    pages = [
        (PretrainConfig, "configuration.md"),
        (TrainerConfig, "configuration.md"),
        (BackboneConfig, "configuration.md"),
        (ViewConfig, "configuration.md"),
        (DataConfig, "data.md"),
        (InspectConfig, "inspect.md"),
        (ProbeConfig, "evaluators.md"),
    ]
    pages += [(EVALUATORS.get(n).Config, "evaluators.md") for n in ("linear", "knn", "partial", "finetune")]
    pages += [(TASKS.get(n).Config, f"pretext/{n}.md") for n in TASKS.names() if TASKS.get(n).__module__.startswith("ssl_toolkit.pretext.")]
    missing = {
        (model.__name__, page): [f for f in model.model_fields if f"`{f}`" not in (docs / page).read_text()] for model, page in pages
    }
    assert {k: v for k, v in missing.items() if v} == {}
    assert len(TrainerConfig.model_fields) >= 28 and len(DataConfig.model_fields) >= 17  # the models were read


def test_a_number_setting_refuses_true_and_false_that_yaml_reads_from_yes_and_no(tmp_path):
    yes = tmp_path / "yes.yaml"
    yes.write_text("trainer:\n  epochs: yes\n")
    with pytest.raises(UserError, match=r"trainer\.epochs: should be a number, not true"):
        validate(PretrainConfig, load_yaml(yes))
    with pytest.raises(UserError, match=r"k: should be a number, not false"):
        validate(EVALUATORS.get("knn").Config, apply_overrides({}, ["k=no"]))
    with pytest.raises(UserError, match=r"^config: temperature: should be a number, not true \(got True\)$"):
        validate(TASKS.get("simclr").Config, {"temperature": True})
    flags = validate(PretrainConfig, apply_overrides({}, ["data.strict=yes", "data.stream=true", "trainer.epochs=2"]))
    assert (flags.data.strict, flags.data.stream, flags.trainer.epochs) == (True, True, 2)  # settings that are flags still take them


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "data.stream",
            "maybe",
            "data.stream: Input should be 'auto' or a valid boolean (got 'maybe')",
        ),
        (
            "trainer.backbone_chunk",
            0,
            "trainer.backbone_chunk: Input should be greater than or equal to 1 or 'auto' (got 0)",
        ),
        ("trainer.epochs", 0, "trainer.epochs: Input should be greater than or equal to 1 (got 0)"),
        ("data.normalize", None, "data.normalize: Input should be 'zscore' or 'minmax' (got no value)"),  # `--set data.normalize=`
    ],
)
def test_a_value_for_a_field_of_several_types_names_the_field_and_what_each_type_wanted(key, value, message):
    """Pydantic tags each member of a union in the error's location (``data.stream.literal['auto']``): not a key a user can set."""
    from ssl_toolkit.config import set_dotted

    data: dict = {}
    set_dotted(data, key, value)
    with pytest.raises(UserError) as e:
        validate(PretrainConfig, data)
    assert str(e.value) == f"config: {message}"


def test_numbers_read_as_numbers_and_a_key_set_twice_is_refused(tmp_path):
    data = apply_overrides({}, ["trainer.lr=2e-3", "backbone.kwargs={drop_path_rate: 1e-1}", "trainer.precision=32", "data.name=1e3x"])
    assert data == {"trainer": {"lr": 0.002, "precision": 32}, "backbone": {"kwargs": {"drop_path_rate": 0.1}}, "data": {"name": "1e3x"}}
    cfg = validate(PretrainConfig, data)  # a float inside kwargs passes the probability check; 32 is the precision '32'
    assert cfg.backbone.kwargs == {"drop_path_rate": 0.1} and cfg.trainer.precision == "32"
    assert validate(ProbeConfig, apply_overrides({}, ["precision=16"])).precision == "16"
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  weight_decay: 1e-4\n  lr: -2E+1\n  epochs: 1_0\n")
    assert load_yaml(path) == {"trainer": {"weight_decay": 0.0001, "lr": -20.0, "epochs": 10}}
    with pytest.raises(UserError, match=r"^--set trainer.epochs is given twice, as '2' and as '3'; give it once$"):
        apply_overrides({}, ["trainer.epochs=2", "trainer.epochs=3"])


def test_a_mapping_given_by_set_merges_and_its_keys_count_as_given(tmp_path, cli, monkeypatch):
    base = {"trainer": {"epochs": 3, "batch_size": 128, "lr": 0.002}, "data": {"name": "digits", "image_size": 24}}
    merged = apply_overrides(yaml.safe_load(yaml.safe_dump(base)), ["trainer={max_steps: 1, lr: 0.1}", "backbone.kwargs={}"])
    assert merged["trainer"] == {"epochs": 3, "batch_size": 128, "lr": 0.1, "max_steps": 1} and merged["backbone"] == {"kwargs": {}}
    with pytest.raises(UserError, match=r"^--set trainer.epochs is given twice, as '3' and as '\{epochs: 4\}'; give it once$"):
        apply_overrides({}, ["trainer.epochs=3", "trainer={epochs: 4}"])
    with pytest.raises(UserError, match=r"^--set trainer..epochs: a key has an empty part"):
        apply_overrides({}, ["trainer..epochs=3"])
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("pretrain", "--epochs", "2", "--set", "trainer={epochs: 4}")
    assert (code, err) == (2, "error: trainer.epochs is given twice, as 2 by --epochs and as 4 by --set; give it once\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]\n", "must hold a mapping at the top level, not list"),
        ("false\n", "must hold a mapping at the top level, not bool"),
        ("0\n", "must hold a mapping at the top level, not int"),
        ("1: 2\n", "key 1 is not a name"),
        ("trainer:\n  ~: 1\n", "key None in trainer is not a name"),
    ],
)
def test_a_config_file_must_hold_a_mapping_of_names(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=rf"^config file {path}: ?{re.escape(message)}|^config file {path} {re.escape(message)}"):
        load_yaml(path)


def test_an_empty_file_or_dev_null_is_no_settings_and_an_empty_path_is_an_error(tmp_path, cli, monkeypatch):
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {} and load_yaml("/dev/null") == {}
    with pytest.raises(UserError, match=r"^config file path is empty; give a YAML file$"):
        load_yaml("")
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("pretrain", "--config", "")  # an unset $CFG: not a default run
    assert (code, err) == (2, "error: config file path is empty; give a YAML file\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.yaml"]


def test_a_dotted_key_inside_a_mapping_says_to_nest_it():
    with pytest.raises(
        UserError,
        match=r"^config: unknown key 'trainer.max_steps' \(keys are not dotted in a mapping: nest it, \{'trainer': \{'max_steps': \.\.\.\}\}\)$",
    ):
        validate(PretrainConfig, {"trainer.max_steps": 3})
