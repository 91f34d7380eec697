"""Config files, sidecars and the YAML reader: what users write, and what they are told when it is wrong."""

import os
import re
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from nst_batch.engine.params import StyleParams
from nst_batch.settings.check import validate_file
from nst_batch.settings.config import (
    Config,
    LogConfig,
    MetricsConfig,
    ModelConfig,
    NotifyConfig,
    PerformanceConfig,
    RayConfig,
    SchedulerConfig,
    load_config,
    params_with_overrides,
)
from nst_batch.settings.sidecar import Sidecar, load_sidecar, sidecar_from_mapping
from nst_batch.settings.yamlfile import load_yaml
from nst_batch.util.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    return str(caught.value)


def sidecar_error(path: Path, defaults: StyleParams | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_sidecar(path, defaults or StyleParams())
    return str(caught.value)


def assert_plain_lines(message: str) -> None:
    assert "pydantic" not in message and "http" not in message and "Input should" not in message


# ---- config.example.yaml ----


def test_example_is_valid_and_shows_the_defaults() -> None:
    config = load_config(EXAMPLE)
    assert config.defaults == StyleParams()
    assert config == Config.model_validate({}, context={"base_dir": EXAMPLE.parent})


@pytest.mark.parametrize(
    "model",
    [Config, ModelConfig, SchedulerConfig, PerformanceConfig, LogConfig, NotifyConfig, MetricsConfig, RayConfig, StyleParams],
)
def test_example_documents_every_field(model: type[BaseModel]) -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for name in model.model_fields:
        at = [i for i, line in enumerate(lines) if re.match(rf"\s*{name}:", line)]
        assert at, f"config.example.yaml does not show {model.__name__}.{name}"
        commented = "#" in lines[at[0]] or lines[at[0] - 1].strip().startswith("#")
        sections = ("model", "scheduler", "performance", "log", "notify", "metrics", "ray", "defaults")
        is_section = issubclass(model, Config) and name in sections
        assert commented or is_section, f"config.example.yaml does not explain {model.__name__}.{name}"


def test_example_warns_that_random_weights_are_for_tests() -> None:
    assert re.search(r"random.*tests only", EXAMPLE.read_text(encoding="utf-8"))


# ---- loading, paths, --set ----


def test_no_file_gives_defaults_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = Config()
    assert config.inbox == tmp_path.resolve() / "inbox"
    assert load_config(None) == config
    with pytest.raises(ValidationError):
        config.device = "cpu"  # type: ignore[misc]


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(
        tmp_path / "etc" / "nst.yaml",
        f"inbox: in\noutbox: ../out\nstate_dir: {tmp_path}/state\nstyles_dir: null\n"
        "model:\n  weights: weights/vgg.pth\nlog:\n  json_file: logs/nst.jsonl\n",
    )
    config = load_config(path)
    base = tmp_path.resolve()
    assert config.inbox == base / "etc" / "in"
    assert config.outbox == base / "out"
    assert config.state_dir == base / "state"
    assert config.styles_dir is None
    assert config.model.weights == str(base / "etc" / "weights" / "vgg.pth")
    assert config.log.json_file == base / "etc" / "logs" / "nst.jsonl"


def test_builtin_weights_are_not_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "c.yaml", "model:\n  weights: random\n"))
    assert config.model.weights == "random"


def test_set_nested_and_bare_keys_with_yaml_types(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "defaults:\n  iterations: 50\nlog:\n")
    config = load_config(
        path,
        [
            "iterations=10",
            "defaults.style_weight=1e5",
            "model.weights=random",
            "defaults.style_layers=[relu1_1,relu2_1]",
            "preserve_colors=true",
            "log.level=debug",
            "device=cuda:1",
        ],
    )
    assert config.defaults.iterations == 10
    assert config.defaults.style_weight == 1e5
    assert config.model.weights == "random"
    assert config.defaults.style_layers == ("relu1_1", "relu2_1")
    assert config.defaults.preserve_colors is True
    assert config.log.level == "DEBUG"
    assert config.device == "cuda:1"


def test_set_problems_say_they_come_from_set(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "")
    assert "--set defaults.iterations: must be >= 1, got 0" in config_error(path, ("iterations=0",))
    assert "did you mean 'iterations'?" in config_error(path, ("iteratons=3",))
    assert "expected KEY=VALUE" in config_error(path, ("iterations",))
    assert "--set defaults.style_layers line 1" in config_error(path, ("style_layers=[relu1_1",))
    assert "--set defaults.iterations" in config_error(path, ("defaults.iterations=!!python/name:os.system",))


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    assert str(tmp_path / "nope.yaml") in config_error(tmp_path / "nope.yaml")


# ---- what users are told ----


def test_unknown_key_suggests_the_nearest_and_lists_the_allowed(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "defaults:\n  style_wieght: 1\nlog:\n  levle: INFO\n")
    message = config_error(path)
    lines = message.splitlines()
    assert len(lines) == 2
    assert any(
        line.startswith(f"{path}: defaults.style_wieght: unknown key (did you mean 'style_weight'?); allowed: ")
        and "tv_weight" in line
        for line in lines
    )
    assert f"{path}: log.levle: unknown key (did you mean 'level'?)" in message


def test_engine_parameter_at_the_top_of_a_config_points_to_defaults(tmp_path: Path) -> None:
    assert "go under `defaults:`" in config_error(write(tmp_path / "c.yaml", "iterations: 10\n"))


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("defaults:\n  iterations: abc\n", "defaults.iterations", "must be a whole number, got 'abc'"),
        ("defaults:\n  iterations: 0\n", "defaults.iterations", "must be >= 1, got 0"),
        ("defaults:\n  style_weight: -1\n", "defaults.style_weight", "must be >= 0, got -1"),
        ("defaults:\n  content_weight: .nan\n", "defaults.content_weight", "must be a finite number"),
        ("defaults:\n  tv_weight: .inf\n", "defaults.tv_weight", "must be a finite number"),
        ("defaults:\n  optimizer: sgd\n", "defaults.optimizer", "must be one of lbfgs, adam, got 'sgd'"),
        ("defaults:\n  style_layers: [relu1_1, relu9_1]\n", "defaults.style_layers", "unknown layer 'relu9_1'"),
        ("defaults:\n  style_layer_weights: [1, 2]\n", "defaults.style_layer_weights", "give one per layer"),
        ("defaults: 5\n", "defaults", "must be a mapping"),
        ("device: gpu\n", "device", "must be auto, cpu, cuda or cuda:N"),
        ("device: cuda:x\n", "device", "must be auto, cpu, cuda or cuda:N"),
        ("settle_seconds: soon\n", "settle_seconds", "must be a number, got 'soon'"),
        ("on_success: trash\n", "on_success", "must be one of keep, archive, delete"),
        ("outbox: inbox/results\n", "outbox", "is inside inbox"),
    ],
)
def test_each_invalid_value_is_one_plain_line_naming_file_and_key(
    tmp_path: Path, text: str, key: str, expected: str
) -> None:
    path = write(tmp_path / "c.yaml", text)
    message = config_error(path)
    assert message.startswith(f"{path}: {key}: ")
    assert expected in message
    assert len(message.splitlines()) == 1
    assert_plain_lines(message)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "device: gpu\ndefaults:\n  iterations: 0\n  tv_weight: -1\n")
    assert len(config_error(path).splitlines()) == 3


# ---- the YAML reader ----


def test_python_tags_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write(tmp_path / "c.yaml", f'inbox: in\ndefaults: !!python/object/apply:os.system ["touch {marker}"]\n')
    message = config_error(path)
    assert f"{path} line 2" in message and "only plain YAML is allowed" in message
    assert not marker.exists()


def test_billion_laughs_is_refused_at_once(tmp_path: Path) -> None:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    path = write(tmp_path / "lol.yaml", "\n".join(lines) + "\n")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"aliases \(\*name\) are not allowed"):
        load_yaml(path)
    assert time.monotonic() - started < 1


def test_large_files_are_refused_before_parsing(tmp_path: Path) -> None:
    path = write(tmp_path / "big.yaml", "# padding\n" * 110_000)
    with pytest.raises(ConfigError, match=r"is 1\.1 MB; sidecars and configs are limited to 1\.0 MB"):
        load_yaml(path)


def test_syntax_errors_name_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "inbox: in\noutbox: out\n  state_dir: s\n")
    assert re.match(rf"{re.escape(str(path))} line 3, column \d+: ", config_error(path))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", None),
        (b"# only a comment\n", None),
        (b"- a\n- b\n", "must be a mapping"),
        (b"inbox: caf\xe9\n", "not UTF-8"),
        (b"inbox: a\ninbox: b\n", "appears twice"),
        (b"a: &x 1\n", "aliases (*name) are not allowed"),
        (b"a: !!binary aGk=\n", "only plain YAML is allowed"),
    ],
)
def test_load_yaml_accepts_only_a_plain_mapping(tmp_path: Path, content: bytes, expected: str | None) -> None:
    path = tmp_path / "x.yaml"
    path.write_bytes(content)
    if expected is None:
        assert load_yaml(path) == {}
    else:
        with pytest.raises(ConfigError, match=re.escape(expected)):
            load_yaml(path)


def test_yaml_values_are_plain_data(tmp_path: Path) -> None:
    path = write(tmp_path / "x.yaml", "name: 2024-05-01\nweight: 1e6\nflag: yes\n")
    assert load_yaml(path) == {"name": "2024-05-01", "weight": 1e6, "flag": True}


# ---- sidecars ----


def test_sidecar_params_override_the_config_defaults(tmp_path: Path) -> None:
    defaults = StyleParams(iterations=10, seed=1)
    path = write(tmp_path / "job.yaml", "content: a.jpg\nstyle: [b.jpg, c.jpg]\nstyle_weight: 1e5\npriority: 5\n")
    sidecar = load_sidecar(path, defaults)
    assert sidecar.content == ("a.jpg",) and sidecar.style == ("b.jpg", "c.jpg")
    assert sidecar.priority == 5 and sidecar.gif is False and sidecar.name is None
    assert (sidecar.params.iterations, sidecar.params.seed, sidecar.params.style_weight) == (10, 1, 1e5)
    assert sidecar.combinations() == [({}, sidecar.params)]


def test_sweep_of_2x2_gives_4_combinations(tmp_path: Path) -> None:
    path = write(tmp_path / "job.yaml", "iterations: 7\nsweep:\n  style_weight: [1e5, 1e6]\n  tv_weight: [0, 1]\n")
    combinations = load_sidecar(path, StyleParams()).combinations()
    assert [values for values, _ in combinations] == [
        {"style_weight": 1e5, "tv_weight": 0.0},
        {"style_weight": 1e5, "tv_weight": 1.0},
        {"style_weight": 1e6, "tv_weight": 0.0},
        {"style_weight": 1e6, "tv_weight": 1.0},
    ]
    for values, params in combinations:
        assert (params.style_weight, params.tv_weight, params.iterations) == (*values.values(), 7)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sweep:\n  iteratons: [1, 2]\n", "sweep.iteratons: unknown key (did you mean 'iterations'?)"),
        ("sweep:\n  iterations: [10, -1]\n", "sweep.iterations[1]: must be >= 1, got -1"),
        ("sweep:\n  iterations: 10\n", "sweep.iterations: must be a list"),
        ("sweep:\n  iterations: []\n", "sweep.iterations: must have at least 1"),
        ("sweep:\n  seed: [{range: 20}]\n", "sweep.seed[0]: must be a whole number"),
        (
            "style_layers: relu1_1\nsweep:\n  backbone: [vgg19, resnet18]\n",
            "sweep.backbone[1]: unknown layer 'relu1_1'",
        ),
        (
            f"sweep:\n  seed: {list(range(20))}\n  iterations: {list(range(1, 14))}\n",
            "sweep: 20 x 13 = 260 combinations; at most 256 are allowed",
        ),
    ],
)
def test_invalid_sweeps_are_refused_naming_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "job.yaml", text)
    message = sidecar_error(path)
    assert f"{path}: {expected}" in message
    assert_plain_lines(message)


@pytest.mark.parametrize(
    "name", ["../../etc", "..", ".hidden", "a/b", "a\\b", "a\nb", "a\x00b", "a\u2028b", "", " x", "x" * 121]
)
def test_unsafe_output_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="name: must be a single folder name"):
        sidecar_from_mapping({"name": name}, source="job.yaml", defaults=StyleParams())


def test_safe_output_names_are_kept() -> None:
    for name in ["portrait 1", "night-sky_v2", "x" * 120, "a.b"]:
        assert sidecar_from_mapping({"name": name}, source="job.yaml", defaults=StyleParams()).name == name


def test_sidecar_unknown_keys_suggest_job_keys_and_params(tmp_path: Path) -> None:
    path = write(tmp_path / "job.yaml", "stlye: b.jpg\nstyle_wieght: 1\nprority: 2\n")
    message = sidecar_error(path)
    assert f"{path}: stlye: unknown key (did you mean 'style'?)" in message
    assert f"{path}: style_wieght: unknown key (did you mean 'style_weight'?)" in message
    assert f"{path}: prority: unknown key (did you mean 'priority'?)" in message


def test_sidecar_reports_param_and_job_problems_together(tmp_path: Path) -> None:
    path = write(tmp_path / "job.yaml", "iterations: 0\npriority: 5000\ngif: maybe\n")
    lines = sidecar_error(path).splitlines()
    assert lines == [
        f"{path}: iterations: must be >= 1, got 0",
        f"{path}: priority: must be <= 1000, got 5000",
        f"{path}: gif: must be true or false, got 'maybe'",
    ]


def test_sidecar_built_in_code_is_validated_too() -> None:
    with pytest.raises(ValidationError, match="sweep.iterations"):
        Sidecar(sweep={"iterations": (0,)})


def test_command_line_params_are_checked_with_the_same_words() -> None:
    flags = {"style_layers": "relu1_1,relu2_1"}
    params = params_with_overrides(StyleParams(iterations=9), flags, source="command line")
    assert params.iterations == 9 and params.style_layers == ("relu1_1", "relu2_1")
    with pytest.raises(ConfigError, match=r"^command line: iterations: must be >= 1, got '0'$"):
        params_with_overrides(StyleParams(), {"iterations": "0"}, source="command line")


# ---- validate_file ----


def test_validate_file_on_configs(tmp_path: Path) -> None:
    good = write(tmp_path / "good.yaml", "inbox: in\nmodel:\n  weights: random\n")
    base = tmp_path.resolve()
    expected = f"config ok: inbox={base / 'in'}, outbox={base / 'outbox'}, device=auto, weights=random"
    assert validate_file(good) == expected
    with pytest.raises(ConfigError, match="device"):
        validate_file(write(tmp_path / "bad.yaml", "inbox: in\ndevice: tpu\n"))


def test_validate_file_on_sidecars(tmp_path: Path) -> None:
    sweep = write(tmp_path / "sweep.yaml", "content: a.jpg\nsweep:\n  style_weight: [1e5, 1e6]\n  tv_weight: [0, 1]\n")
    assert validate_file(sweep) == "sidecar ok: 4 jobs (sweep of style_weight x tv_weight)"
    assert validate_file(write(tmp_path / "one.yaml", "iterations: 5\n")) == "sidecar ok: 1 job"
    with pytest.raises(ConfigError, match=r"sweep\.iterations\[0\]"):
        validate_file(write(tmp_path / "bad.yaml", "sweep:\n  iterations: [0]\n"))
    layers = write(tmp_path / "layers.yaml", "style_layers: [relu1_1]\n")
    assert validate_file(layers) == "sidecar ok: 1 job"
    with pytest.raises(ConfigError, match="style_layers: unknown layer 'relu1_1' for resnet18"):
        validate_file(layers, defaults=StyleParams(backbone="resnet18"))


def test_an_untrusted_yaml_file_is_read_only_if_it_is_a_regular_file_reached_directly(tmp_path: Path) -> None:
    real = write(tmp_path / "real.yaml", "iterations: 3\n")
    (tmp_path / "link.yaml").symlink_to(real)
    os.mkfifo(tmp_path / "pipe.yaml")
    assert load_yaml(tmp_path / "link.yaml") == {"iterations": 3}  # a config may well be a link
    with pytest.raises(ConfigError, match="link.yaml is a symbolic link"):
        load_yaml(tmp_path / "link.yaml", untrusted=True)
    with pytest.raises(ConfigError, match="pipe.yaml is not a regular file"):
        load_yaml(tmp_path / "pipe.yaml", untrusted=True)  # at once: nothing will ever write to it
