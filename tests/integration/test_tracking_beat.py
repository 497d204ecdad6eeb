"""Only one beat may run: a second beat waits on the RedBeat lock instead of doubling every
periodic task (the hourly tracking sweep included), and takes over when the first stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from workers.fleet import settings_env


def _beat(tmp_path: Path, name: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app", "beat", "--loglevel", "info",
             "-s", str(tmp_path / f"{name}-schedule")],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_a_second_beat_waits_and_takes_over(broker, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given two beats on one Redis, with a tracking sweep due every second
    env = {**os.environ, **settings_env(settings.model_copy(update={
        "tracking_sweep_interval_s": 1.0})), "PYTHONUNBUFFERED": "1"}
    first, first_log = _beat(tmp_path, "beat-a", env)
    _wait(lambda: "Acquired lock" in first_log.read_text(), 20, "the first beat's lock")
    second, second_log = _beat(tmp_path, "beat-b", env)
    try:
        # when both run for a few seconds
        time.sleep(1.0)
        before = broker.llen("tracking")
        time.sleep(5.0)
        sent = broker.llen("tracking") - before

        # then the sweep was sent about once a second (not twice), by the lock holder only
        assert 3 <= sent <= 7, sent
        assert "Acquired lock" not in second_log.read_text()

        # and when the first beat stops, the second one takes over
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(15)
        _wait(lambda: "Acquired lock" in second_log.read_text(), 20,
              "the second beat to take the lock over")
        before = broker.llen("tracking")
        _wait(lambda: broker.llen("tracking") > before, 10, "sweeps from the second beat")
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
