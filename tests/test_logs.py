"""Logging: journald priorities under systemd, the job id on job lines, JSON lines, stdlib routed in."""

import json
import logging

from loguru import logger

from nst_batch.cli.logs import setup_logging


def test_journald_lines_carry_priorities_and_job_ids(monkeypatch, capsys):
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    setup_logging()
    logger.bind(job="job-7").info("started")
    logger.warning("disk is filling up")
    logging.getLogger("watchdog").error("observer died")  # stdlib logging arrives too
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "<6>INFO [job-7] started"
    assert lines[1] == "<4>WARNING disk is filling up"
    assert lines[2] == "<3>ERROR observer died"


def test_json_lines_file_and_no_variable_dumps(tmp_path, capsys):
    log_file = tmp_path / "logs" / "nst.jsonl"
    setup_logging(json_file=log_file)
    secret = "do-not-dump-me"  # noqa: F841 - a local that diagnose=True would print
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.bind(job="job-3").exception("run failed")
    logger.complete()
    err = capsys.readouterr().err
    assert "RuntimeError: boom" in err and "do-not-dump-me" not in err
    record = json.loads(log_file.read_text().splitlines()[-1])["record"]
    assert record["message"] == "run failed" and record["extra"]["job"] == "job-3"
