"""A result that is not a picture (black, flat, or the image it started from) is never published
as a success: it is tried again with another seed, then the other optimizer, then it fails
with the reason, and every attempt says why in the job's log and job.json."""

import pytest
import yaml

from daemon_helpers import Daemon, daemon_factory, make_image  # noqa: F401

pytestmark = pytest.mark.slow


def test_an_unchanged_result_is_retried_then_failed_with_the_reason(daemon_factory):
    daemon: Daemon = daemon_factory(settle_seconds=0.2)
    daemon.start()
    # No style weight: the content image is already optimal, so the result is the content itself.
    (daemon.inbox / "still.yaml").write_text(yaml.safe_dump({"style_weight": 0, "iterations": 25}))
    make_image(daemon.inbox / "still.content.png", (40, 30), "gradient")
    make_image(daemon.inbox / "still.style.png", (30, 40), "noise")
    make_image(daemon.inbox / "fine.content.png", (40, 30), "gradient")
    make_image(daemon.inbox / "fine.style.png", (30, 40), "noise")
    reason = daemon.wait_failed("still", timeout=120)["still"]
    assert "the image it started from" in reason
    assert not (daemon.outbox / "still").exists()
    log = daemon.log()
    assert "trying again with seed 1" in log and "trying again with optimizer adam" in log
    [run] = daemon.query("SELECT attempts, params FROM runs WHERE label='still'")
    assert run["attempts"] == 3 and '"optimizer": "adam"' in run["params"]
    assert daemon.wait_published("fine")["fine"]["results"][0]["status"] == "done"  # a real run is not taken for one
    assert daemon.terminate()[0] == 0
