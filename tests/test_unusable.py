"""A result that is not a picture (black, flat, or the image it started from) is never published
as a success: it is tried again with another seed, then the other optimizer (never changing what
a sweep varies), then it fails with the reason, and the log and job.json say why."""

import pytest
import yaml
from daemon_helpers import Daemon, make_image

from nst_batch.daemon.finishing import another_try
from nst_batch.engine import StyleParams


def test_another_try_takes_a_new_seed_then_the_other_optimizer():
    params = StyleParams(seed=4, optimizer="lbfgs", lr=0.5)
    first, second = another_try(params, 1, {}), another_try(params, 2, {})
    assert (first[0].seed, first[1]) == (5, "seed 5")
    assert (second[0].optimizer, second[0].learning_rate, second[1]) == ("adam", 0.02, "optimizer adam")
    assert another_try(params, 3, {}) is None


def test_another_try_never_changes_what_a_sweep_varies():
    params = StyleParams(seed=4)
    assert another_try(params, 1, {"seed": 4})[1] == "optimizer adam"
    assert another_try(params, 2, {"seed": 4}) is None
    assert another_try(params, 1, {"optimizer": "lbfgs"})[1] == "seed 5"
    assert another_try(params, 2, {"optimizer": "lbfgs"}) is None


@pytest.mark.slow
def test_an_unchanged_result_is_tried_again_and_fails_with_the_reason_when_nothing_is_left(daemon_factory):
    daemon: Daemon = daemon_factory(settle_seconds=0.2)
    daemon.start()
    # A step far too small to change a grey level in 25 iterations: the result is its content.
    tiny_steps = {"optimizer": "adam", "lr": 1e-6, "iterations": 25}
    (daemon.inbox / "still.yaml").write_text(yaml.safe_dump(tiny_steps))
    (daemon.inbox / "stuck.yaml").write_text(yaml.safe_dump({"lr": 1e-6, "iterations": 25, "sweep": {"optimizer": ["adam", "lbfgs"]}}))
    for name in ("still", "stuck"):
        make_image(daemon.inbox / f"{name}.content.png", (40, 30), "gradient")
        make_image(daemon.inbox / f"{name}.style.png", (30, 40), "noise")
    # still: the same with seed 1, then L-BFGS at its own step size moves it: published, and says so
    [result] = daemon.wait_published("still", timeout=120)["still"]["results"]
    assert result["status"] == "done" and result["attempts"] == 3 and result["params"]["optimizer"] == "lbfgs"
    assert "the image it started from" in result["warning"] and "tried again with optimizer lbfgs" in result["warning"]
    # stuck: its optimizer is what the sweep varies, so only the seed is tried; then failed/ with the reason
    reason = daemon.wait_failed("stuck", timeout=120)["stuck"]
    assert "optimizer=adam: the result is the image it started from" in reason
    [adam] = daemon.query("SELECT attempts, params, status FROM runs WHERE label='optimizer=adam'")
    assert (adam["status"], adam["attempts"]) == ("failed", 2) and '"seed": 1' in adam["params"]
    assert not (daemon.outbox / "stuck" / "optimizer=adam.png").exists()
    log = daemon.log()
    assert "trying again with seed 1" in log and "trying again with optimizer lbfgs" in log
    assert daemon.terminate()[0] == 0
