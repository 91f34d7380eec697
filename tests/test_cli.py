"""The one-shot command line: what it writes, and its one-line answers to bad input."""

import csv
import json
import socket
import subprocess
import sys

import pytest
from PIL import Image

from nst_batch.cli.main import main
from nst_batch.util.imagefile import read_metadata


@pytest.fixture()
def images(tmp_path):
    gradient = Image.linear_gradient("L").resize((60, 30)).convert("RGB")
    gradient.save(tmp_path / "content.png")
    Image.effect_noise((24, 24), 64).convert("RGB").save(tmp_path / "style.jpg")
    (tmp_path / "notes.png").write_text("not an image")
    return tmp_path


def run_cli(*args: str) -> int:
    return main(["run", "--weights", "random", *args])


def test_run_writes_image_loss_log_and_gif(images, capsys):
    out = images / "out.png"
    code = run_cli(
        "--content", str(images / "content.png"), "--style", str(images / "style.jpg"), "--output", str(out),
        "--image-size", "40", "--iterations", "4", "--seed", "7", "--gif", str(images / "out.gif"),
    )
    assert code == 0
    assert Image.open(out).size == (40, 20)  # long side 40, the content's 2:1 aspect kept
    with open(images / "out.losses.csv") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["iteration", "content", "style", "tv", "total", "elapsed_s", "note"]
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert all(abs(float(r["content"]) + float(r["style"]) + float(r["tv"]) - float(r["total"])) <= 1e-5 * float(r["total"]) + 1e-12 for r in rows)
    metadata = read_metadata(out)
    assert json.loads(metadata["nst-batch:params"])["seed"] == 7
    assert "RANDOM" in metadata["nst-batch:weights"]
    gif = Image.open(images / "out.gif")
    assert gif.n_frames >= 2


def test_seed_002_spelling_and_blend(images):
    out = images / "blend.png"
    code = run_cli(
        "--content", str(images / "content.png"), "--style", str(images / "style.jpg"),
        "--style", str(images / "content.png"), "--style-blend", "0.7,0.3", "--output", str(out),
        "--image_size", "32", "--content_weight", "2", "--style_weight", "1e5", "--iterations", "2", "--no-log",
    )
    assert code == 0
    assert max(Image.open(out).size) == 32
    assert not (images / "blend.losses.csv").exists()
    params = json.loads(read_metadata(out)["nst-batch:params"])
    assert params["content_weight"] == 2 and params["style_weight"] == 1e5
    assert params["style_blend_weights"] == [0.7, 0.3]


def test_content_already_at_image_size(images):
    """Regression: a decoded image that needs no resize reached L-BFGS as a non-contiguous view."""
    out = images / "same.png"
    code = run_cli(
        "--content", str(images / "content.png"), "--style", str(images / "style.jpg"), "--output", str(out),
        "--image-size", "60", "--iterations", "2", "--no-log",
    )
    assert code == 0
    assert Image.open(out).size == (60, 30)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"--content": "missing.png"}, "missing.png does not exist"),
        ({"--content": "notes.png"}, "notes.png is not an image"),
        ({"--style-layers": "relu9_1"}, "unknown layer 'relu9_1'"),
        ({"--iterations": "many"}, "iterations: must be a whole number"),
        ({"--style-weight": "-1"}, "style_weight"),
        ({"--output": "out.txt"}, "unsupported format"),
        ({"--style-blend": "1,2"}, "give one per style"),
        ({"--device": "tpu"}, "tpu"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(images, capsys, change, expected):
    args = {
        "--content": "content.png", "--style": "style.jpg", "--output": "out.png", "--iterations": "1",
        "--image-size": "24",
    } | change
    argv = []
    for flag, value in args.items():
        argv += [flag, value if flag not in ("--content", "--style", "--output") else str(images / value)]
    code = run_cli(*argv)
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("nst-batch: error:")]
    assert code == 2
    assert len(error_lines) == 1 and expected in error_lines[0]
    assert "Traceback" not in err
    assert not (images / "out.png").exists()


def test_imagenet_weights_missing_offline_is_a_clear_error(images, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    code = main([
        "run", "--content", str(images / "content.png"), "--style", str(images / "style.jpg"),
        "--output", str(images / "out.png"), "--iterations", "1",
    ])
    err = capsys.readouterr().err
    assert code == 2
    assert "vgg19-dcbb9e9d.pth" in err and "nst-batch fetch-weights" in err and "Traceback" not in err


def test_fetch_weights_unreachable_mirror(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["fetch-weights", "--url", f"http://127.0.0.1:{port}/vgg19.pth"])
    assert code == 2
    assert "could not download" in capsys.readouterr().err
    assert not any(tmp_path.rglob("*.pth"))


def test_validate_config_and_sidecar(tmp_path, capsys):
    good = tmp_path / "config.yaml"
    good.write_text("defaults:\n  iterations: 10\n")
    bad = tmp_path / "job.yaml"
    bad.write_text("iteratons: 10\n")
    assert main(["validate", str(good)]) == 0
    assert "config ok" in capsys.readouterr().out
    assert main(["validate", str(bad)]) == 2
    assert "did you mean 'iterations'" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "nst_batch", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("nst-batch ")


def test_fetch_weights_malformed_url_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert main(["fetch-weights", "--url", "example.org/vgg19.pth"]) == 2
    err = capsys.readouterr().err
    assert "could not download example.org/vgg19.pth" in err and "Traceback" not in err


def test_estimate_one_job_grows_with_the_image_and_reads_the_queue(images, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("scheduler:\n  memory_budget: 1GiB\n")
    base = ["estimate", "--config", str(config), "--content", str(images / "content.png"), "--style", str(images / "style.jpg")]

    def figures(*extra):
        assert main([*base, *extra, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    small, large = figures("--image-size", "256"), figures("--image-size", "1024")
    assert large["peak_bytes"] > 4 * small["peak_bytes"] * 0.8 and large["seconds"] > small["seconds"]
    assert (large["width"], large["height"]) == (1024, 512) and large["budget_bytes"] == 1 << 30
    assert small["fits"] and not large["fits"] and not small["calibrated"]

    assert main(["estimate", "--config", str(config), "--queue"]) == 0
    assert "0 run(s) queued" in capsys.readouterr().out
    assert main(["estimate", "--config", str(config)]) == 2
    assert "needs --content and --style" in capsys.readouterr().err


def test_tile_auto_picks_the_largest_tile_that_fits_the_budget_or_says_what_would(images, capsys, monkeypatch):
    from nst_batch.daemon import capacity
    from nst_batch.daemon.capacity import MARGIN
    from nst_batch.daemon.memory import MemoryModel, run_need
    from nst_batch.engine import StyleParams

    monkeypatch.setattr(capacity, "probe", lambda *args: [])  # the model's prior, not this machine's probes
    shallow = {"content_layers": "relu2_1", "style_layers": "relu1_1,relu2_1"}
    base = ("--content", str(images / "content.png"), "--style", str(images / "style.jpg"), "--iterations", "1",
            "--image-size", "192", "--optimizer", "adam", "--tile", "auto",
            *(item for key, value in shallow.items() for item in (f"--{key}", value)))
    whole = MemoryModel(margin=MARGIN["cpu"]).peak(
        run_need(StyleParams(image_size=192, optimizer="adam", **shallow), (60, 30), 1))
    out = images / "tiled.png"
    assert run_cli(*base, "--output", str(out), "--memory-budget", str(whole - 1)) == 0
    params = json.loads(read_metadata(out)["nst-batch:params"])
    assert isinstance(params["tile"], int) and params["tile"] < 192
    assert Image.open(out).size == (192, 96)
    assert run_cli(*base, "--output", str(images / "roomy.png"), "--memory-budget", str(whole)) == 0
    assert json.loads(read_metadata(images / "roomy.png")["nst-batch:params"]).get("tile") is None
    capsys.readouterr()
    assert run_cli(*base, "--output", str(images / "never.png"), "--memory-budget", "1MiB") == 2
    error = capsys.readouterr().err
    assert "--tile auto: needs" in error and "--memory-budget" in error and "Traceback" not in error


def test_a_memory_budget_without_tile_auto_is_refused(images, capsys):
    code = run_cli("--content", str(images / "content.png"), "--style", str(images / "style.jpg"),
                   "--output", str(images / "out.png"), "--memory-budget", "1GiB")
    assert code == 2 and "add --tile auto" in capsys.readouterr().err
    assert not (images / "out.png").exists()
