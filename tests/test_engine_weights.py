"""Where weights come from: random, a user's .pth (torchvision or Caffe layout), the ImageNet cache
and fetch_weights; every bad file or failed download is a WeightsError that says what to do."""

import functools
import http.server
import io
import threading
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from nst_batch.cli.fetch import fetch_weights
from nst_batch.engine import FeatureExtractor, imagenet_file, load_network
from nst_batch.engine.features import CAFFE, TORCHVISION
from nst_batch.engine.layers import LAYERS
from nst_batch.util.errors import WeightsError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGENET_NAME = "vgg19-dcbb9e9d.pth"
CAFFE_NAME = "vgg19-d01eb7cb.pth"


@pytest.fixture(scope="module")
def vgg19_state() -> dict[str, torch.Tensor]:
    """A seeded torchvision VGG-19's state dict, in its own layout (``features.N.weight``).

    The 500 MB classifier is left out but for one small tensor, which the loader must ignore.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = torchvision.models.vgg19()
    state = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
    state["classifier.6.bias"] = model.state_dict()["classifier.6.bias"]
    return state


@pytest.fixture(scope="module")
def vgg19_file(vgg19_state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "my-vgg19.pth"
    torch.save(vgg19_state, path)
    return path


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME: the ImageNet cache is $TORCH_HOME/hub/checkpoints."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def mirror(tmp_path):
    """A loopback HTTP server for the files in its folder; yields (folder, base URL)."""
    folder = tmp_path / "mirror"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _conv_weight(state: dict, name: str) -> torch.Tensor:
    return state[f"features.{LAYERS['vgg19'].index(name)}.weight"]


def _files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# -- random weights ------------------------------------------------------------------------


def test_random_weights_are_not_pretrained_and_say_so():
    _, info = load_network("resnet18", "random")
    assert (info.source, info.pretrained, info.layout) == ("random", False, "torchvision")
    assert "RANDOM" in info.describe()


# -- a user's file ---------------------------------------------------------------------------


def test_torchvision_layout_file_loads_its_tensors_with_torchvision_normalization(vgg19_file, vgg19_state):
    network, info = load_network("vgg19", str(vgg19_file))
    for name in ("conv1_1", "conv3_2", "conv5_4"):
        assert torch.equal(network.layers[name].weight, _conv_weight(vgg19_state, name)), name
    assert torch.equal(network.layers["conv5_4"].bias, vgg19_state["features.34.bias"])
    assert network.normalization == TORCHVISION
    assert (info.pretrained, info.layout, info.file) == (True, "torchvision", str(vgg19_file))
    assert str(vgg19_file) in info.describe() and "torchvision" in info.describe()


def test_caffe_file_is_recognised_by_name_and_normalized_bgr_0_255_minus_mean(vgg19_file, vgg19_state, tmp_path):
    caffe = tmp_path / CAFFE_NAME
    caffe.symlink_to(vgg19_file)
    network, info = load_network("vgg19", str(caffe))
    assert info.layout == "caffe" and network.normalization == CAFFE
    assert torch.equal(network.layers["conv1_1"].weight, _conv_weight(vgg19_state, "conv1_1"))

    pixel = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)  # RGB
    by_hand = [0.6 * 255 - 103.939, 0.4 * 255 - 116.779, 0.2 * 255 - 123.68]  # B, G, R in 0-255, mean removed
    normalized = FeatureExtractor(network, ["conv1_1"]).normalize(pixel)
    torch.testing.assert_close(normalized.flatten(), torch.tensor(by_hand))


@pytest.mark.parametrize(
    ("name", "weights_format", "expected"),
    [("my-vgg19.pth", "caffe", CAFFE), (CAFFE_NAME, "torchvision", TORCHVISION)],
)
def test_weights_format_overrides_the_guess_from_the_file_name(
    vgg19_file, tmp_path, name, weights_format, expected
):
    path = tmp_path / name
    path.symlink_to(vgg19_file)
    network, info = load_network("vgg19", str(path), weights_format=weights_format)
    assert network.normalization == expected
    assert info.layout == weights_format


def test_file_keyed_by_layer_name_loads(vgg19_state, tmp_path):
    """Gatys' vgg_conv.pth style: ``conv1_1.weight`` instead of ``features.0.weight``."""
    by_name = {}
    for key, value in vgg19_state.items():
        if key.startswith("features."):
            _, index, kind = key.split(".")
            by_name[f"{LAYERS['vgg19'][int(index)]}.{kind}"] = value
    assert "conv5_4.weight" in by_name
    path = tmp_path / "vgg_conv.pth"
    torch.save(by_name, path)
    network, _ = load_network("vgg19", str(path))
    for name in ("conv1_1", "conv4_3", "conv5_4"):
        assert torch.equal(network.layers[name].weight, by_name[f"{name}.weight"]), name


def test_file_for_another_backbone_is_refused(vgg19_file):
    with pytest.raises(WeightsError, match=r"is not a vgg16 state dict: it lacks \d+ tensors"):
        load_network("vgg16", str(vgg19_file))


def test_file_with_wrong_shapes_is_refused(tmp_path):
    convs = [index for index, name in enumerate(LAYERS["vgg19"]) if name.startswith("conv")]
    path = tmp_path / "tiny.pth"
    torch.save({f"features.{i}.{kind}": torch.zeros(1) for i in convs for kind in ("weight", "bias")}, path)
    with pytest.raises(WeightsError, match="does not fit vgg19"):
        load_network("vgg19", str(path))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ([torch.zeros(2)], "holds a list, not a state dict"),
        (nn.Linear(2, 2), "is not a PyTorch state dict"),  # a whole pickled model: refused by weights_only
    ],
)
def test_pickle_that_is_not_a_state_dict_is_refused(tmp_path, content, expected):
    path = tmp_path / "model.pth"
    torch.save(content, path)
    with pytest.raises(WeightsError, match=expected) as error:
        load_network("vgg19", str(path))
    assert str(path) in str(error.value)


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint\x00\xff" * 100)
    with pytest.raises(WeightsError, match="is not a PyTorch state dict"):
        load_network("vgg19", str(path))


def test_missing_file_is_refused_with_the_alternatives(tmp_path):
    path = tmp_path / "nowhere.pth"
    with pytest.raises(WeightsError, match="does not exist") as error:
        load_network("vgg19", str(path))
    assert str(path) in str(error.value) and "'imagenet'" in str(error.value)


# -- the ImageNet cache and fetch_weights ----------------------------------------------------


def test_missing_imagenet_weights_say_which_file_where_and_how_to_get_it(torch_home):
    with pytest.raises(WeightsError) as error:
        load_network("vgg19", "imagenet")
    message = str(error.value)
    assert IMAGENET_NAME in message
    assert str(torch_home / "hub" / "checkpoints") in message
    assert "nst-batch fetch-weights" in message


def test_fetch_weights_from_a_mirror_fills_the_cache_that_load_network_reads(
    torch_home, mirror, vgg19_file, vgg19_state
):
    folder, base = mirror
    (folder / "vgg19.pth").write_bytes(vgg19_file.read_bytes())

    path = fetch_weights("vgg19", url=f"{base}/vgg19.pth", timeout=10)

    assert path == torch_home / "hub" / "checkpoints" / IMAGENET_NAME == imagenet_file("vgg19")
    assert _files_in(path.parent) == [path]  # no partial download left beside it
    network, info = load_network("vgg19", "imagenet")
    assert info.pretrained and info.source == "imagenet" and info.layout == "torchvision"
    assert torch.equal(network.layers["conv2_1"].weight, _conv_weight(vgg19_state, "conv2_1"))


@pytest.mark.parametrize(
    ("served", "expected"),
    [(b"<html>mirror moved</html>", "is not a PyTorch state dict"), (None, "could not download")],
)
def test_fetch_weights_from_a_bad_mirror_fails_and_leaves_nothing(torch_home, mirror, served, expected):
    folder, base = mirror
    if served is not None:
        (folder / "vgg19.pth").write_bytes(served)  # otherwise: 404
    with pytest.raises(WeightsError, match=expected):
        fetch_weights("vgg19", url=f"{base}/vgg19.pth", timeout=10)
    assert _files_in(torch_home / "hub") == []
    with pytest.raises(WeightsError, match="not on this machine"):
        load_network("vgg19", "imagenet")


def test_fetch_weights_from_an_unreachable_host_fails(torch_home):
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(WeightsError, match=f"could not download http://127.0.0.1:{port}/"):
        fetch_weights("vgg19", url=f"http://127.0.0.1:{port}/vgg19.pth", timeout=5)
    assert _files_in(torch_home / "hub") == []


def test_fetch_weights_checks_the_official_files_checksum(torch_home, vgg19_file, monkeypatch):
    """A valid state dict whose SHA-256 does not start with the name's dcbb9e9d is still refused."""
    requested = []

    def fake_urlopen(url, timeout):
        requested.append(url)
        return io.BytesIO(vgg19_file.read_bytes())

    monkeypatch.setattr("urllib.request.urlopen", fake_urlopen)
    with pytest.raises(WeightsError, match="corrupt"):
        fetch_weights("vgg19")
    assert requested == [torchvision.models.VGG19_Weights.IMAGENET1K_V1.url]
    assert _files_in(torch_home / "hub") == []


# -- `make run`'s first step: fetch-weights --config --if-missing ----------------------------


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_make_runs_first_step_fetches_the_configs_backbone_once(torch_home, mirror, vgg19_file, tmp_path, capsys):
    from nst_batch.cli.main import main

    folder, base = mirror
    (folder / "vgg19.pth").write_bytes(vgg19_file.read_bytes())
    config = _config(tmp_path, "model:\n  weights: imagenet\n")
    fetch = ["fetch-weights", "--config", str(config), "--if-missing", "--url", f"{base}/vgg19.pth"]
    assert main(fetch) == 0
    assert _files_in(torch_home / "hub") == [imagenet_file("vgg19")]
    (folder / "vgg19.pth").unlink()  # a second download would now fail (404)
    assert main(fetch) == 0
    assert f"the vgg19 ImageNet weights are in {imagenet_file('vgg19')}" in capsys.readouterr().err
    assert load_network("vgg19", "imagenet")[1].pretrained


def test_make_runs_first_step_fetches_nothing_for_other_weights(torch_home, tmp_path, capsys):
    from nst_batch.cli.main import main

    config = _config(tmp_path, "model:\n  weights: random\n")
    unreachable = "http://127.0.0.1:9/vgg19.pth"  # the discard port: a download would fail
    assert main(["fetch-weights", "--config", str(config), "--if-missing", "--url", unreachable]) == 0
    assert "nothing to fetch" in capsys.readouterr().err and _files_in(torch_home / "hub") == []


def test_make_runs_first_step_offline_is_one_line_that_says_what_to_do(torch_home, tmp_path, capsys):
    from nst_batch.cli.main import main

    config = _config(tmp_path, "model:\n  weights: imagenet\ndefaults:\n  backbone: vgg16\n")
    unreachable = "http://127.0.0.1:9/vgg16.pth"
    assert main(["fetch-weights", "--config", str(config), "--if-missing", "--url", unreachable]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "could not download" in errors[0]
    assert imagenet_file("vgg16").name in errors[0] and str(imagenet_file("vgg16").parent) in errors[0]
    assert _files_in(torch_home / "hub") == []


def test_make_run_fetches_missing_weights_before_it_serves(tmp_path):
    import subprocess

    root = Path(__file__).resolve().parents[1]
    config = _config(tmp_path, "model:\n  weights: imagenet\n")
    plan = subprocess.run(["make", "-n", "-C", str(root), "run", f"CONFIG={config}"], capture_output=True, text=True)
    commands = [line for line in plan.stdout.splitlines() if "nst-batch " in line]
    assert [c.split("nst-batch ")[1].split()[0] for c in commands] == ["fetch-weights", "serve"], plan.stdout
    assert "--if-missing" in commands[0] and f"--config {config}" in commands[0]
