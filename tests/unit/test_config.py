"""The experiment config: YAML files, ``extends``, ``--set`` overrides and one-line errors.

The CLI tests run the real entry points in subprocesses, each with an empty scratch directory as
its working dir; they are all started before the module's first test, so their interpreter
start-ups overlap with the in-process tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from forgesweep.config import (
    ExperimentConfig,
    check_search_space,
    deep_merge,
    load_config,
    load_config_dict,
    parse_override,
    set_dotted,
    validate_config,
)
from forgesweep.errors import ConfigError, UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "jobs" / "configs"
DEFAULT = CONFIGS / "default.yaml"
SMOKE = CONFIGS / "smoke.yaml"
SWEEP_SCRIPT = REPO_ROOT / "jobs" / "sweep_cffd.py"


def _config_error(overrides=(), path=DEFAULT) -> str:
    """The message of the ConfigError that loading ``path`` with ``overrides`` raises."""
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message, f"not one line: {message!r}"
    return message


# --------------------------------------------------------------------------- shipped files


def test_default_yaml_loads_and_validates():
    cfg = load_config(DEFAULT)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == "cffd-synthetic"
    assert [t.name for t in cfg.data.sequence] == ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]
    # The string shorthand expands to reals plus the method's fakes.
    assert cfg.data.sequence[1].methods == ["real", "Face2Face"]
    assert cfg.model.name == "rsia_net" and cfg.model.preset == "small"
    assert cfg.strategy.name == "cffd"
    assert cfg.strategy.params.w_hscl == pytest.approx(0.1)  # HSCL over the (spatial, frequency) pairs
    assert cfg.strategy.params.kd_temperature == 2.0
    assert cfg.strategy.params.feature_layers == ["stage3", "stage4"]
    assert cfg.strategy.params.replay_size == 200
    assert cfg.train.epochs_per_task == 4
    assert cfg.sweep.scheduler.type == "asha"
    assert set(cfg.sweep.space) == {
        "strategy.kd_temperature", "strategy.replay_size", "strategy.w_slkd", "strategy.w_mfkd",
        "strategy.feature_layers", "strategy.replay_policy", "strategy.w_hscl", "train.lr",
    }
    assert cfg.sweep.space["strategy.replay_size"].type == "int"


def test_smoke_yaml_extends_default():
    cfg = load_config(SMOKE)
    assert cfg.name == "cffd-smoke"
    # Overridden by smoke.yaml ...
    assert cfg.model.params.width == 4 and cfg.model.params.embed_dim == 16  # preset "tiny"
    assert cfg.data.image_size == 32
    assert cfg.data.synthetic.image_size == 32
    assert cfg.data.synthetic.train_identities == 12
    assert cfg.train.epochs_per_task == 1
    assert cfg.sweep.num_samples == 2
    assert cfg.sweep.scheduler.type == "none"
    assert cfg.tracking.registered_model == "cffd-synthetic-smoke"
    # The compact model is smoke's fast preset (it has spatial/frequency pairs for HSCL too).
    assert cfg.model.name == "rsia_lite" and cfg.strategy.params.w_hscl == pytest.approx(0.1)
    # ... while sibling keys come from default.yaml (a recursive merge, not a replacement).
    assert cfg.data.synthetic.seed == 0
    assert cfg.data.batch_size == 32
    assert cfg.sweep.scheduler.grace_period == 2
    assert cfg.train.lr == pytest.approx(2e-3)
    assert cfg.strategy.params.kd_temperature == 2.0
    assert cfg.tracking.experiment == "forgesweep-cffd"
    assert len(cfg.sweep.space) == 8


@pytest.mark.parametrize("path", [DEFAULT, SMOKE], ids=["default", "smoke"])
def test_shipped_configs_round_trip_through_to_dict(path):
    cfg = load_config(path)
    again = validate_config(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()
    assert again.model.params == cfg.model.params
    assert again.strategy.params == cfg.strategy.params


EXPERIMENT_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("serve"))


@pytest.mark.parametrize("path", EXPERIMENT_CONFIGS, ids=[p.stem for p in EXPERIMENT_CONFIGS])
def test_every_shipped_experiment_config_validates(path):
    cfg = load_config(path)  # strategy features are checked against the model's here
    assert validate_config(cfg.to_dict()).to_dict() == cfg.to_dict()
    check_search_space(cfg)  # every bound and choice of the (inherited) search space fits the model


def test_a_null_dimension_drops_an_inherited_one():
    cfg = load_config(CONFIGS / "arch_dcr.yaml")
    assert "strategy.w_hscl" in load_config(DEFAULT).sweep.space
    assert "strategy.w_hscl" not in cfg.sweep.space


def test_switching_to_a_model_without_domain_pairs_names_them():
    with pytest.raises(ConfigError, match=r"strategy.domain_pairs .*'spatial1' is not a feature of model 'dcr'"):
        load_config(DEFAULT, ["model.name=dcr", "strategy.feature_layers=[stage4]"])
    assert load_config(DEFAULT, ["model.name=dcr", "strategy.feature_layers=[stage4]", "strategy.w_hscl=0"])


def test_built_in_defaults_validate_without_a_file():
    cfg = load_config(None)
    assert cfg.model.name == "rsia_lite" and cfg.strategy.name == "cffd"
    assert len(cfg.data.sequence) == 4


# --------------------------------------------------------------------------- overrides


def test_override_float_is_parsed_as_float():
    cfg = load_config(DEFAULT, ["strategy.kd_temperature=2.0"])
    value = cfg.strategy.params.kd_temperature
    assert value == 2.0 and isinstance(value, float)
    cfg = load_config(DEFAULT, ["strategy.kd_temperature=4.5"])
    assert cfg.strategy.params.kd_temperature == 4.5


def test_override_plus_joined_layers_become_a_list():
    cfg = load_config(DEFAULT, ["strategy.feature_layers=stage2+stage3"])
    assert cfg.strategy.params.feature_layers == ["stage2", "stage3"]
    cfg = load_config(DEFAULT, ["strategy.feature_layers=[stage1, stage4]"])
    assert cfg.strategy.params.feature_layers == ["stage1", "stage4"]


def test_overrides_parse_yaml_scalars():
    assert parse_override("strategy.kd_temperature=2.0") == ("strategy.kd_temperature", 2.0)
    assert parse_override("train.epochs_per_task=7") == ("train.epochs_per_task", 7)
    assert parse_override("train.use_gpu=false") == ("train.use_gpu", False)
    assert parse_override("sweep.seed=null") == ("sweep.seed", None)
    assert parse_override("name=a=b") == ("name", "a=b")  # split at the first '=' only
    cfg = load_config(DEFAULT, ["train.epochs_per_task=7", "train.use_gpu=false", "sweep.seed=null"])
    assert cfg.train.epochs_per_task == 7 and isinstance(cfg.train.epochs_per_task, int)
    assert cfg.train.use_gpu is False
    assert cfg.sweep.seed is None


def test_later_overrides_win_and_create_sections():
    data = load_config_dict(DEFAULT, ["train.lr=0.002", "train.lr=0.003"])
    assert data["train"]["lr"] == 0.003
    data = load_config_dict(None, ["data.synthetic.seed=5"])
    assert data == {"data": {"synthetic": {"seed": 5}}}


def test_override_without_equals_sign_is_a_config_error():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("strategy.kd_temperature")


def test_set_dotted_into_a_scalar_is_a_config_error():
    data = {"name": "x"}
    with pytest.raises(ConfigError, match="name"):
        set_dotted(data, "name.first", 1)
    with pytest.raises(ConfigError):
        set_dotted(data, "train..lr", 1)


def test_documented_switch_to_finetune_is_accepted(capsys):
    # cli.py's docstring documents `forgesweep train --set strategy.name=finetune` and
    # jobs/train.py `python jobs/train.py --smoke --set strategy.name=finetune`; both start from
    # default.yaml, whose strategy section carries CFFD's parameters: switching the name drops them.
    from forgesweep.cli import main, resolve_config

    cfg = resolve_config(None, ["strategy.name=finetune"], smoke=True)
    assert cfg.strategy.name == "finetune" and cfg.strategy.raw_params == {}
    # The sweep's search space still names CFFD keys: a sweep (and `config`) says so ...
    assert main(["config", "--set", "strategy.name=finetune"]) == 2
    assert "sweep.space.strategy.kd_temperature" in capsys.readouterr().err
    # ... and accepts the switch once the space matches.
    status = main(["config", "--set", "strategy.name=finetune", "--set", "sweep.space={}"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert yaml.safe_load(captured.out)["strategy"] == {"name": "finetune"}


def test_switching_component_in_an_extending_file_drops_old_params(tmp_path):
    (tmp_path / "base.yaml").write_text("strategy: {name: cffd, kd_temperature: 3.0}\n")
    (tmp_path / "ft.yaml").write_text("extends: base.yaml\nstrategy: {name: finetune}\n")
    assert load_config(tmp_path / "ft.yaml").strategy.raw_params == {}


# --------------------------------------------------------------------------- extends


def test_extends_merges_recursively(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "name: base\n"
        "train: {lr: 0.01, epochs_per_task: 5}\n"
        "data: {image_size: 32, sequence: [Deepfakes, Face2Face]}\n"
        "strategy: {name: cffd, kd_temperature: 3.0, w_slkd: 2.0}\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "middle.yaml").write_text(
        "extends: ../base.yaml\n"
        "train: {epochs_per_task: 2}\n"
        "strategy: {w_slkd: 0.5}\n"
    )
    (tmp_path / "sub" / "child.yaml").write_text(
        "extends: middle.yaml\n"
        "name: child\n"
        "data: {sequence: [FaceSwap]}\n"
    )
    cfg = load_config(tmp_path / "sub" / "child.yaml")
    assert cfg.name == "child"
    assert cfg.train.lr == 0.01 and cfg.train.epochs_per_task == 2
    assert cfg.data.image_size == 32
    assert [t.name for t in cfg.data.sequence] == ["FaceSwap"]  # lists replace, they do not merge
    assert cfg.strategy.params.kd_temperature == 3.0
    assert cfg.strategy.params.w_slkd == 0.5
    # `extends` itself is consumed, never validated as a key.
    assert "extends" not in load_config_dict(tmp_path / "sub" / "child.yaml")


def test_extends_loop_is_a_config_error(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    message = _config_error(path=tmp_path / "a.yaml")
    assert "extends" in message


def test_extends_missing_parent_names_it(tmp_path):
    (tmp_path / "child.yaml").write_text("extends: nowhere.yaml\n")
    message = _config_error(path=tmp_path / "child.yaml")
    assert "nowhere.yaml" in message


def test_deep_merge_does_not_mutate_its_inputs():
    base = {"a": {"b": 1, "c": [1]}}
    over = {"a": {"b": 2}}
    merged = deep_merge(base, over)
    assert merged == {"a": {"b": 2, "c": [1]}}
    merged["a"]["c"].append(2)
    assert base == {"a": {"b": 1, "c": [1]}} and over == {"a": {"b": 2}}


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "override, field",
    [
        ("nmae=x", "nmae"),  # unknown top-level key
        ("train.lrr=0.1", "train.lrr"),  # unknown nested key
        ("sweep.scheduler.grace=3", "sweep.scheduler.grace"),  # two levels down
        ("data.synthetic.seeed=1", "data.synthetic.seeed"),
        ("strategy.kd_temprature=3", "strategy.kd_temprature"),  # unknown strategy parameter
        ("model.widht=8", "model.widht"),  # unknown model parameter
        ("train.epochs_per_task=many", "train.epochs_per_task"),  # wrong type
        ("data.horizontal_flip=[1]", "data.horizontal_flip"),
        ("strategy.w_slkd=heavy", "strategy.w_slkd"),
        ("model.width=wide", "model.width"),
        ("train.lr=0", "train.lr"),  # out of range
        ("data.batch_size=0", "data.batch_size"),
        ("data.synthetic.image_size=8", "data.synthetic.image_size"),
        ("strategy.kd_temperature=-1", "strategy.kd_temperature"),
        ("strategy.replay_size=-5", "strategy.replay_size"),
        ("model.dropout=1.5", "model.dropout"),
        ("model.dct_block=6", "model.dct_block"),
        ("train.optimizer=lbfgs", "train.optimizer"),
        ("model.name=nope", "model.name"),  # unknown model
        ("model.preset=huge", "model.preset"),
        ("strategy.name=nope", "strategy.name"),  # unknown strategy
        ("strategy.replay_policy=fifo", "strategy.replay_policy"),
        ("data.sequence=[{name: A, methods: [real, Deepfakes], bogus: 1}]", "data.sequence.0.bogus"),
    ],
)
def test_bad_value_is_a_one_line_config_error_naming_the_field(override, field):
    message = _config_error([override])
    assert field in message, message


def test_unknown_model_and_strategy_list_the_known_ones():
    assert "rsia_lite" in _config_error(["model.name=nope"])
    message = _config_error(["strategy.name=nope"])
    assert "cffd" in message and "finetune" in message


def test_wrong_type_of_model_preset_is_a_config_error():
    # A list (or mapping) as the preset name is a wrong type, like any other.
    message = _config_error(["model.preset=[tiny]"])
    assert "model.preset" in message


def test_unknown_key_in_a_yaml_file_is_reported(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("extends: " + str(DEFAULT) + "\ntrain:\n  epochs_per_tsk: 3\n")
    assert "train.epochs_per_tsk" in _config_error(path=path)


def test_validate_config_reports_the_first_field_of_a_dict():
    with pytest.raises(ConfigError) as info:
        validate_config({"tracking": {"experiment": ""}})
    assert "tracking.experiment" in str(info.value) and "\n" not in str(info.value)


def test_bad_yaml_is_a_config_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\ntrain:\n  lr: 0.1\n")
    message = _config_error(path=path)
    assert "broken.yaml" in message and "YAML" in message


def test_yaml_that_is_not_a_mapping_is_a_config_error(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    assert "list.yaml" in _config_error(path=path)


def test_missing_file_is_a_config_error_naming_it(tmp_path):
    missing = tmp_path / "absent.yaml"
    message = _config_error(path=missing)
    assert str(missing) in message


def _write_space(tmp_path: Path, space: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"extends": str(DEFAULT), "sweep": {"space": space}}))
    return path


def test_sweep_space_dimension_with_a_bad_range_names_it(tmp_path):
    path = _write_space(tmp_path, {"train.lr": {"type": "loguniform", "low": 0.0, "high": 1.0}})
    assert "sweep.space.train.lr" in _config_error(path=path)
    path = _write_space(tmp_path, {"train.lr": {"type": "uniform", "low": 2.0, "high": 1.0}})
    assert "sweep.space.train.lr" in _config_error(path=path)


def test_sweep_space_dimension_with_an_unknown_field_names_it(tmp_path):
    path = _write_space(tmp_path, {"train.lr": {"type": "uniform", "lo": 1.0, "high": 2.0}})
    assert "sweep.space.train.lr.lo" in _config_error(path=path)
    path = _write_space(tmp_path, {"train.lr": {"type": "normal", "low": 1.0, "high": 2.0}})
    assert "sweep.space.train.lr.type" in _config_error(path=path)


def test_sweep_space_keyed_by_a_misspelled_config_key_is_a_config_error(tmp_path):
    # config.py: "a misspelled key (in a YAML file, a --set override or a sweep search space)
    # fails loudly with the field's dotted name".
    from forgesweep.config import check_search_space

    path = _write_space(tmp_path, {"strategy.kd_temprature": {"type": "uniform", "low": 1.0, "high": 2.0}})
    with pytest.raises(ConfigError) as excinfo:
        check_search_space(load_config(path))
    message = str(excinfo.value)
    assert "sweep.space.strategy.kd_temprature" in message and "\n" not in message


def test_config_error_is_a_user_error():
    assert issubclass(ConfigError, UserError)


# --------------------------------------------------------------------------- real CLI

_CLI_CASES = {
    "misspelled_key": [str(SWEEP_SCRIPT), "--set", "strategy.kd_temprature=3"],
    "unknown_model": [str(SWEEP_SCRIPT), "--set", "model.name=nope"],
    "missing_config": [str(SWEEP_SCRIPT), "--config", "/nonexistent.yaml"],
    "config_smoke": ["-m", "forgesweep.cli", "config", "--smoke"],
}


@pytest.fixture(scope="module", autouse=True)
def _cli_processes(request, tmp_path_factory):
    """Start every CLI case (each in its own empty working dir) before this module's first test,
    so the interpreters start up while the in-process tests run; nothing when no CLI test runs."""
    if not any(item.name.startswith("test_cli_") and item.module is request.module
               for item in request.session.items):
        yield {}
        return
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PYTHONPATH", None)
    procs = {}
    try:
        for name, args in _CLI_CASES.items():
            cwd = tmp_path_factory.mktemp(f"cli-{name}")
            procs[name] = (cwd, subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, text=True,
                                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        yield procs
    finally:
        for _, proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture(scope="module")
def cli_runs(_cli_processes):
    """``{case: (exit status, stdout, stderr, working dir)}`` once every case has finished."""
    results = {}
    for name, (cwd, proc) in _cli_processes.items():
        out, err = proc.communicate(timeout=120)
        results[name] = (proc.returncode, out, err, cwd)
    return results


@pytest.mark.parametrize(
    "case, expected",
    [
        ("misspelled_key", "strategy.kd_temprature"),
        ("unknown_model", "model.name"),
        ("missing_config", "/nonexistent.yaml"),
    ],
)
def test_cli_bad_input_exits_2_with_one_error_line_and_creates_nothing(cli_runs, case, expected):
    status, out, err, cwd = cli_runs[case]
    assert status == 2, f"status {status}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1, f"stderr is not one line: {err!r}"
    assert lines[0].startswith("error:"), lines[0]
    assert expected in lines[0], lines[0]
    assert sorted(p.name for p in cwd.iterdir()) == [], "the failed command wrote into its working dir"


def test_cli_config_smoke_prints_yaml_that_revalidates(cli_runs):
    status, out, err, cwd = cli_runs["config_smoke"]
    assert status == 0, err
    data = yaml.safe_load(out)
    cfg = validate_config(data)
    assert cfg.name == "cffd-smoke"
    assert cfg.model.params.width == 4  # smoke's preset "tiny"
    assert cfg.sweep.num_samples == 2
    assert cfg.to_dict() == data  # printing loses nothing
    # Local paths are resolved against the working directory.
    assert Path(cfg.data.root) == (cwd / "data" / "synthetic-smoke").resolve()
    assert Path(cfg.train.storage_path).is_absolute()
    assert sorted(p.name for p in cwd.iterdir()) == []
