"""`executor: threads | ray` and the `ray:` section: what is accepted, what is refused and how it
says so, and that nothing changes for the threads executor. No Ray needed."""

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from nst_batch.settings.config import Config, RayConfig, load_config
from nst_batch.util.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def refusal(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(config_file(tmp_path, text), overrides)
    return str(caught.value)


def test_threads_is_the_default_and_ray_is_unset(tmp_path):
    config = load_config(config_file(tmp_path, "device: cpu\n"))
    assert config.executor == "threads"
    assert config.ray == RayConfig() and config.ray.address is None and config.ray.devices is None
    assert config.ray.object_store_memory is None
    assert "executor" not in config.summary()


@pytest.mark.parametrize("address", ["auto", "10.0.0.5:6379", "head.studio.lan:6380", "[::1]:6379", "127.0.0.1:1"])
def test_addresses_of_a_cluster(tmp_path, address):
    config = load_config(config_file(tmp_path, f"executor: ray\nray:\n  address: '{address}'\n"))
    assert config.executor == "ray" and config.ray.address == address
    assert f"executor=ray ({address})" in config.summary()


def test_no_address_is_a_ray_of_this_machines_own(tmp_path):
    config = load_config(config_file(tmp_path, "executor: ray\nray:\n  devices: 4\n  object_store_memory: 2GiB\n"))
    assert config.ray.address is None and config.ray.devices == 4
    assert config.ray.object_store_memory == 2 * 2**30
    assert "executor=ray (local)" in config.summary()


@pytest.mark.parametrize("address", ["head", "head:0", "head:70000", "http://head:6379", "head:6379/x", ""])
def test_a_bad_address_is_one_line_naming_the_key(tmp_path, address):
    message = refusal(tmp_path, f"executor: ray\nray:\n  address: '{address}'\n")
    assert message.startswith(f"{tmp_path / 'config.yaml'}: ray.address: ") and "HOST:PORT" in message
    assert len(message.splitlines()) == 1


def test_ray_client_addresses_are_refused_with_the_reason(tmp_path):
    message = refusal(tmp_path, "executor: ray\nray:\n  address: ray://head:10001\n")
    assert "ray.address" in message and "Ray Client" in message


def test_the_object_store_has_rays_minimum(tmp_path):
    message = refusal(tmp_path, "executor: ray\nray:\n  object_store_memory: 10MiB\n")
    assert "ray.object_store_memory" in message and "75MiB" in message
    assert load_config(config_file(tmp_path, "ray:\n  object_store_memory: 75MiB\n")).ray.object_store_memory == 75 * 2**20


@pytest.mark.parametrize("devices", [0, -1, 2000, "two"])
def test_devices_is_a_positive_count(tmp_path, devices):
    assert "ray.devices" in refusal(tmp_path, f"executor: ray\nray:\n  devices: {devices}\n")


def test_one_gpu_of_this_process_means_nothing_to_ray(tmp_path):
    message = refusal(tmp_path, "executor: ray\ndevice: cuda:1\n")
    assert "cuda:1 is one GPU" in message and "device: cuda" in message and "ray.devices" in message
    assert len(message.splitlines()) == 1


def test_cpu_actors_need_a_count(tmp_path):
    assert "ray.devices" in refusal(tmp_path, "executor: ray\ndevice: cpu\n")
    config = load_config(config_file(tmp_path, "executor: ray\ndevice: cpu\nray:\n  devices: 2\n"))
    assert (config.device, config.ray.devices) == ("cpu", 2)


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_gpu_actors(tmp_path, device):
    assert load_config(config_file(tmp_path, f"executor: ray\ndevice: {device}\n")).device == device


def test_threads_keeps_device_as_it_was_and_ignores_the_ray_section(tmp_path):
    config = load_config(config_file(tmp_path, "device: cuda:1\nray:\n  devices: 3\n"))
    assert (config.executor, config.device, config.ray.devices) == ("threads", "cuda:1", 3)


def test_an_unknown_executor_or_ray_key_is_refused(tmp_path):
    assert "threads" in refusal(tmp_path, "executor: celery\n")
    message = refusal(tmp_path, "ray:\n  adress: auto\n")
    assert "ray.adress" in message and "address" in message  # did you mean


def test_a_commented_out_ray_section_is_the_defaults(tmp_path):
    assert load_config(config_file(tmp_path, "ray:\n  # address: auto\n")).ray == RayConfig()


def test_set_overrides_the_ray_keys(tmp_path):
    path = config_file(tmp_path, "device: cpu\n")
    config = load_config(path, ("executor=ray", "ray.devices=2", "ray.address=auto"))
    assert (config.executor, config.ray.devices, config.ray.address) == ("ray", 2, "auto")
    assert "ray.devices" in refusal(tmp_path, "device: cpu\n", ("executor=ray",))  # cpu actors need a count


def test_frozen():
    config = Config.model_validate({"executor": "ray", "ray": {"devices": 2}})
    with pytest.raises(ValidationError):
        config.ray.devices = 3
    with pytest.raises(ValidationError):
        config.executor = "threads"


def test_without_the_extra_the_ray_executor_says_in_one_line_how_to_install_it(tmp_path, monkeypatch):
    import signal
    import sys

    from nst_batch.daemon import actors
    from nst_batch.daemon.service import Service

    monkeypatch.setattr(actors, "ray_installed", lambda: False)
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)  # never replace pytest's handlers
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    config = load_config(config_file(tmp_path, "executor: ray\ndevice: cpu\nray:\n  devices: 2\n"))
    with Service(config) as daemon, pytest.raises(ConfigError, match=r"^executor: ray needs the ray extra: pip install"):
        daemon.serve()
    assert "ray" not in sys.modules


def test_the_extra_pins_the_minimal_ray_package():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extra = project["project"]["optional-dependencies"]["ray"]
    assert len(extra) == 1 and re.fullmatch(r"ray==\d+\.\d+\.\d+", extra[0]), extra  # no [default]: no jobs API
    assert not any(dep.startswith("ray") for dep in project["project"]["dependencies"])
    assert any(marker.startswith("ray:") for marker in project["tool"]["pytest"]["ini_options"]["markers"])


def test_the_readme_documents_the_ray_executor_and_its_extra():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "executor: ray" in readme and "nst-batch[ray]" in readme
