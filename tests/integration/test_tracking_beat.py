"""Only one beat may run: a second beat waits on the RedBeat lock instead of doubling every
periodic task (the hourly tracking sweep included), and takes over when the first stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.waiting import eventually
from workers.fleet import settings_env


def _beat(tmp_path: Path, name: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        # Debug: a beat logs "Acquiring lock..." when it starts waiting for the RedBeat lock.
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.app", "beat", "--loglevel", "debug",
             "-s", str(tmp_path / f"{name}-schedule")],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _sweeps_sent(log: Path) -> int:
    """Tracking sweeps a beat sent: it logs each one just before sending it."""
    return log.read_text().count("Sending due task tracking-sweep")


def _senders(broker) -> list[str]:
    """The process that sent each sweep waiting on the tracking queue (``gen<pid>@host``)."""
    return [json.loads(raw)["headers"]["origin"].split("@")[0]
            for raw in broker.lrange("tracking", 0, -1)]


def test_a_second_beat_waits_and_takes_over(broker, settings, tmp_path) -> None:
    # Given two beats on one Redis, with a tracking sweep due every second
    env = {**os.environ, **settings_env(settings.model_copy(update={
        "tracking_sweep_interval_s": 1.0})), "PYTHONUNBUFFERED": "1"}
    first, first_log = _beat(tmp_path, "beat-a", env)
    eventually(lambda: "Acquired lock" in first_log.read_text(), 20, "the first beat's lock")
    second, second_log = _beat(tmp_path, "beat-b", env)
    try:
        # when both run for a few sweeps
        eventually(lambda: "Acquiring lock" in second_log.read_text(), 20,
                   "the second beat to wait for the lock")
        ticks = _sweeps_sent(first_log)
        eventually(lambda: _sweeps_sent(first_log) >= ticks + 3, 20,
                   "three more sweeps while both beats run")

        # then the sweep was sent once per tick (not twice), by the lock holder only
        eventually(lambda: broker.llen("tracking") == _sweeps_sent(first_log), 10,
                   "one queued sweep per tick the first beat logged")
        assert set(_senders(broker)) == {f"gen{first.pid}"}
        assert "Sending due task" not in second_log.read_text()
        assert "Acquired lock" not in second_log.read_text()

        # and when the first beat stops, the second one takes over
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(15)
        eventually(lambda: "Acquired lock" in second_log.read_text(), 20,
                   "the second beat to take the lock over")
        eventually(lambda: f"gen{second.pid}" in _senders(broker), 10,
                   "sweeps from the second beat")
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
