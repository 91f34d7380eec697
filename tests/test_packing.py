"""Several runs side by side on one device, out-of-memory errors, and runs too big to fit:
the real runner and engine on tiny images, through the service's real loop in this process."""

import json
import sqlite3
import threading
import time

import pytest
import torch
from daemon_helpers import serve_until_settled
from PIL import Image

from nst_batch.daemon import publisher as publisher_module
from nst_batch.daemon import runner as runner_module
from nst_batch.daemon.checkpoint import save_checkpoint
from nst_batch.daemon.service import Service
from nst_batch.daemon.store import RunSpec, Store
from nst_batch.engine import stylize
from nst_batch.results.reel import FrameReel
from nst_batch.settings.config import Config
from nst_batch.util.imagefile import read_image

real_stylize = runner_module.stylize_batch


def make_service(tmp_path, monkeypatch, checkpoint_every: int = 25, **scheduler) -> Service:
    monkeypatch.setattr("signal.signal", lambda signum, handler: None)
    config = Config(
        performance={"autocast": "off", "threads": 1}, checkpoint_every=checkpoint_every,
        inbox=tmp_path / "inbox", outbox=tmp_path / "outbox", state_dir=tmp_path / "state", styles_dir=None,
        model={"weights": "random"}, max_attempts=2,
        defaults={"image_size": 32, "iterations": 2, "seed": 0, "early_stop_tol": 0},
        scheduler={"calibrate": False, **scheduler},
    )
    return Service(config)


def queue_job(service: Service, name: str, size: tuple[int, int] = (40, 30), **overrides) -> int:
    job_id = service.store.begin_claim(name, "pair", [f"{name}.content.png", f"{name}.style.png"], None, {})
    folder = service.folders.job_dir(job_id)
    folder.mkdir(parents=True)
    Image.linear_gradient("L").resize(size).convert("RGB").save(folder / f"{name}.content.png")
    style = Image.merge("RGB", [Image.radial_gradient("L").rotate(40 * i + len(name)) for i in range(3)])
    style.resize((24, 24)).save(folder / f"{name}.style.png")  # made, not drawn at random: runs can be compared
    params = service.config.defaults.with_overrides(overrides)
    spec = RunSpec(name, f"{name}.content.png", (f"{name}.style.png",), params, {}, content_size=size)
    service.store.queue(job_id, [spec], 0, name, {})
    return job_id


def test_out_of_memory_in_one_of_three_concurrent_runs_is_retried_alone(tmp_path, monkeypatch):
    service = make_service(tmp_path, monkeypatch, max_concurrent=3)
    jobs = [queue_job(service, name) for name in ("one", "two", "three")]
    unlucky = service.store.runs(jobs[1])[0].id
    together = threading.Barrier(3, timeout=60)
    calls = []

    def flaky_stylize(*args, **kwargs):
        me = threading.current_thread().name
        first_attempt = all(name != me for name, _ in calls)
        calls.append((me, len(service.workers.active)))
        if first_attempt:
            together.wait()  # all three are on the device at once
            if me == f"run-{unlucky}":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_stylize(*args, **kwargs)

    monkeypatch.setattr(runner_module, "stylize_batch", flaky_stylize)
    serve_until_settled(service)

    assert [service.store.job(j).status for j in jobs] == ["done", "done", "done"]
    folders = sorted(p.name for p in service.folders.outbox.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert folders == ["one", "three", "two"]
    retried = service.store.run(unlucky)
    assert retried.attempts == 2 and retried.alone
    assert calls[-1] == (f"run-{unlucky}", 1)  # its retry had the device to itself
    result = json.loads((service.folders.outbox / "two" / "job.json").read_text())["results"][0]
    assert result["attempts"] == 2 and result["status"] == "done"
    service.store.close()


def test_out_of_memory_every_time_ends_in_failed_with_the_reason(tmp_path, monkeypatch):
    service = make_service(tmp_path, monkeypatch, max_concurrent=2)
    doomed, fine = queue_job(service, "doomed"), queue_job(service, "fine")
    doomed_thread = f"run-{service.store.runs(doomed)[0].id}"

    def stylize(*args, **kwargs):
        if threading.current_thread().name == doomed_thread:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9999999999 bytes")
        return real_stylize(*args, **kwargs)

    monkeypatch.setattr(runner_module, "stylize_batch", stylize)
    serve_until_settled(service)
    assert service.store.job(fine).status == "done"
    assert service.store.job(doomed).status == "failed"
    error = (service.folders.failed / "doomed" / "error.txt").read_text()
    assert "out of memory" in error and "can't allocate memory" in error
    service.store.close()


@pytest.mark.parametrize("policy", ["downscale", "adam", "lbfgs_history"])
def test_a_run_too_big_for_the_budget_is_changed_to_fit_and_says_so(tmp_path, monkeypatch, policy):
    service = make_service(tmp_path, monkeypatch, memory_budget="700MiB", too_big=policy)
    job = queue_job(service, "big")
    # 100 iterations book a full L-BFGS history; the early stop ends the run after two
    quick = {"iterations": 100, "early_stop_tol": 0.99, "early_stop_window": 1}
    bigger = service.config.defaults.with_overrides({"image_size": 256, **quick})
    service.store.change_params(service.store.runs(job)[0].id, bigger, None)
    serve_until_settled(service)
    result = json.loads((service.folders.outbox / "big" / "job.json").read_text())["results"][0]
    assert result["status"] == "done" and "the budget is 0.68 GiB" in result["warning"]
    changed = {"downscale": "image_size", "adam": "optimizer", "lbfgs_history": "lbfgs_history"}[policy]
    assert changed in result["warning"]
    params = result["params"]
    assert {"downscale": params["image_size"] < 256, "adam": params["optimizer"] == "adam",
            "lbfgs_history": params["lbfgs_history"] < 100}[policy]
    service.store.close()


def test_a_run_too_big_with_policy_fail_says_what_would_fit(tmp_path, monkeypatch):
    service = make_service(tmp_path, monkeypatch, memory_budget="700MiB", too_big="fail")
    job = queue_job(service, "big")
    bigger = service.config.defaults.with_overrides({"image_size": 256, "iterations": 100})
    service.store.change_params(service.store.runs(job)[0].id, bigger, None)
    serve_until_settled(service)
    error = (service.folders.failed / "big" / "error.txt").read_text()
    assert "the memory budget is 0.68 GiB" in error and "it would fit with" in error and "image_size:" in error
    service.store.close()


def test_a_1024px_job_over_the_budget_is_tiled_and_makes_a_1024px_result(tmp_path, monkeypatch):
    """too_big: auto (the default) tiles it: the same picture, in the memory of one tile."""
    from nst_batch.daemon.memory import run_need

    service = make_service(tmp_path, monkeypatch, memory_budget="700MiB")
    job = queue_job(service, "print", size=(1024, 768))
    run = service.store.runs(job)[0]
    shallow = {"content_layers": "relu2_1", "style_layers": "relu1_1,relu2_1", "optimizer": "adam"}  # cheap on a CPU
    params = service.config.defaults.with_overrides({"image_size": 1024, "iterations": 1, **shallow})
    service.store.change_params(run.id, params, None)
    model = service.capacity.model(service.store, "vgg19")
    assert model.peak(run_need(params, (1024, 768), 1)) > 700 * 2**20  # whole, it would not fit
    serve_until_settled(service, timeout=240)

    result = json.loads((service.folders.outbox / "print" / "job.json").read_text())["results"][0]
    assert result["status"] == "done"
    tile = result["params"]["tile"]
    assert isinstance(tile, int) and tile < 1024 and f"tile: None -> {tile}" in result["warning"]
    assert model.peak(run_need(params.with_overrides({"tile": tile}), (1024, 768), 1)) <= 700 * 2**20
    (picture,) = (service.folders.outbox / "print").glob(f"{result['label']}.png")
    with Image.open(picture) as image:
        assert image.size == (1024, 768)
    service.store.close()


def final_losses(service: Service, name: str) -> float:
    return json.loads((service.folders.outbox / name / "job.json").read_text())["results"][0]["final_losses"]["total"]


def spy_on_batches(monkeypatch, fail_first: Exception | None = None) -> list[int]:
    """The size of every batch stylize_batch is given, in order; optionally break the first."""
    batches: list[int] = []

    def stylize_batch(network, members, **kwargs):
        batches.append(len(members))
        if fail_first is not None and len(batches) == 1:
            raise fail_first
        return real_stylize(network, members, **kwargs)

    monkeypatch.setattr(runner_module, "stylize_batch", stylize_batch)
    return batches


JOBS = {"a": {}, "b": {"style_weight": 1e4}, "c": {"optimizer": "adam", "seed": 7}, "d": {"image_size": 24}}


def test_runs_of_one_shape_go_through_as_one_batch_with_the_results_they_would_have_apart(tmp_path, monkeypatch):
    finals = {}
    for max_batch in (1, 4):
        service = make_service(tmp_path / f"batch{max_batch}", monkeypatch, max_batch=max_batch)
        for name, overrides in JOBS.items():
            queue_job(service, name, **overrides)
        batches = spy_on_batches(monkeypatch)
        serve_until_settled(service)
        # a, b and c share a shape (adam's precision is fp32 here: performance.autocast off); d does not
        assert sorted(batches) == ([1, 1, 1, 1] if max_batch == 1 else [1, 3])
        assert all(service.store.job(job.id).status == "done" for job in service.store.jobs())
        finals[max_batch] = {name: final_losses(service, name) for name in JOBS}
        service.store.close()
    # Two iterations: the last record is the loss after one step, before L-BFGS's curvature
    # amplifies the batched convolution's rounding (1e-7; see test_engine_batch), so 1e-3 is safe.
    for name in JOBS:
        assert finals[4][name] == pytest.approx(finals[1][name], rel=1e-3), name


def test_a_batch_out_of_memory_retries_each_of_its_runs_alone(tmp_path, monkeypatch):
    service = make_service(tmp_path, monkeypatch, max_batch=4)
    jobs = [queue_job(service, name) for name in ("one", "two", "three")]
    batches = spy_on_batches(monkeypatch, fail_first=torch.OutOfMemoryError("CUDA out of memory. Tried 2.00 GiB"))
    serve_until_settled(service)
    assert batches == [3, 1, 1, 1]
    for job in jobs:
        (run,) = service.store.runs(job)
        assert service.store.job(job).status == "done" and run.alone
        assert run.attempts == 1  # the batch was too big, not the run: that attempt was given back
    service.store.close()


def test_a_run_whose_image_is_not_the_recorded_shape_leaves_the_batch_and_runs_apart(tmp_path, monkeypatch):
    service = make_service(tmp_path, monkeypatch, max_batch=4)
    fine = queue_job(service, "fine")
    turned = queue_job(service, "turned")  # recorded as 40 x 30, as the file's header said...
    image = service.folders.job_dir(turned) / "turned.content.png"
    Image.open(image).rotate(90, expand=True).save(image)  # ...but it decodes to 30 x 40
    batches = spy_on_batches(monkeypatch)
    serve_until_settled(service)
    assert batches == [1, 1]
    assert service.store.job(fine).status == service.store.job(turned).status == "done"
    assert [service.store.runs(job)[0].attempts for job in (fine, turned)] == [1, 1]
    service.store.close()


def test_a_result_that_cannot_be_written_costs_only_its_own_run(tmp_path, monkeypatch):
    service = make_service(tmp_path, monkeypatch, max_batch=4)
    jobs = [queue_job(service, name) for name in ("one", "two", "three")]
    real_write, broken = publisher_module.write_run, []

    def write(staging, output_format, run):
        if run.label == "two" and not broken:
            broken.append(run.label)
            raise RuntimeError("a bug while writing")
        return real_write(staging, output_format, run)

    monkeypatch.setattr(publisher_module, "write_run", write)
    serve_until_settled(service)
    assert broken == ["two"]
    assert [service.store.job(job).status for job in jobs] == ["done", "done", "done"]
    assert [service.store.runs(job)[0].attempts for job in jobs] == [1, 2, 1]
    service.store.close()


@pytest.mark.parametrize(("save_s", "expected"), [(0.0, 3 * 6), (0.3, 1)])
def test_checkpoints_slower_than_the_runs_come_less_often(tmp_path, monkeypatch, save_s, expected):
    service = make_service(tmp_path, monkeypatch, checkpoint_every=1, max_batch=4)
    for name in ("one", "two", "three"):
        queue_job(service, name, iterations=6)
    batches = spy_on_batches(monkeypatch)
    saved: list[tuple[int, str]] = []

    def save_checkpoint(path, state, frames, params, log):  # as long as a save takes, without the disk's own time
        time.sleep(save_s)
        saved.append((state.iteration, path.name))
        return True

    monkeypatch.setattr(runner_module, "save_checkpoint", save_checkpoint)
    serve_until_settled(service)
    assert batches == [3] and all(job.status == "done" for job in service.store.jobs())
    # Cheap saves: every run, every iteration. A save that takes 0.3 s, when six iterations of
    # the batch take about 0.2 s: the first, then none until saving is back within 5% of the time.
    assert len(saved) == expected
    if save_s:
        assert saved[0][0] == 1
    service.store.close()


def test_a_run_changed_to_fit_after_its_checkpoint_starts_again_rather_than_fail(tmp_path, monkeypatch):
    """A checkpoint at 32 px, then the too_big policy shrinks the queued run to 24 px: the old
    state cannot resume the new run (its image has the old size), so the run starts afresh."""
    service = make_service(tmp_path, monkeypatch)
    job = queue_job(service, "big", iterations=4)
    [run] = service.store.runs(job)
    params = run.params
    folder = service.folders.job_dir(job)
    stopped = stylize(
        service.runner.network("vgg19")[0], read_image(folder / "big.content.png"), [read_image(folder / "big.style.png")],
        params, callback=lambda progress: progress.iteration == 2,
    )
    assert save_checkpoint(service.folders.checkpoint(run.id), stopped.state, FrameReel(), params)
    service.store.change_params(run.id, params.with_overrides({"image_size": 24}), "shrunk to fit the device")
    serve_until_settled(service)
    [run] = service.store.runs(job)
    assert (service.store.job(job).status, run.attempts) == ("done", 1)
    record = json.loads((service.folders.outbox / "big" / "job.json").read_text())
    assert record["results"][0]["iterations"] == 4  # all of them: nothing resumed
    with Image.open(service.folders.outbox / "big" / "big.png") as image:
        assert max(image.size) == 24
    service.store.close()


def test_an_error_in_one_runs_progress_costs_only_that_run(tmp_path, monkeypatch):
    service = make_service(tmp_path, monkeypatch, max_batch=4)
    jobs = [queue_job(service, name) for name in ("one", "two", "three")]
    two = service.store.runs(jobs[1])[0].id
    real_progress, broken = Store.progress, []

    def progress(self, run_id, *args):
        if run_id == two and not broken:
            broken.append(run_id)
            raise sqlite3.OperationalError("database is locked")
        return real_progress(self, run_id, *args)

    monkeypatch.setattr(Store, "progress", progress)
    batches = spy_on_batches(monkeypatch)
    serve_until_settled(service)
    assert broken == [two] and batches == [3, 1]
    assert [service.store.job(job).status for job in jobs] == ["done", "done", "done"]
    assert [service.store.runs(job)[0].attempts for job in jobs] == [1, 2, 1]
    service.store.close()
