"""The benchmarks' own arithmetic and instruments: percentiles, the message log of the stage
profiler, the worker RSS sampler."""

from __future__ import annotations

import subprocess
import sys

import psutil

from benchmarks.pipeline import RssSampler, percentile
from benchmarks.stages import MessageLog
from config.settings import Settings
from workers.fleet import Fleet


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.95) == 95.0
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([], 0.95) is None


def test_message_log_hands_each_stage_its_messages_once() -> None:
    log = MessageLog()
    log("orderfleet.fraud.check", ([1, 2],), {})
    log("orderfleet.fraud.check", ([3],), {"countdown": 1.0})
    log("orderfleet.labels.buy", (7,), {})
    assert log.take("orderfleet.fraud.check") == [([1, 2],), ([3],)]
    assert log.take("orderfleet.fraud.check") == []
    assert log.take("orderfleet.labels.buy") == [(7,)]


def test_rss_sampler_counts_worker_processes_and_their_children() -> None:
    # A "worker" that has a child, as a prefork worker has its pool.
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print('up', flush=True); time.sleep(60)")
    worker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == b"up"
        fleet = Fleet(Settings(), workers=1)
        fleet.procs.update({"worker1": worker, "carrier": other})
        row = RssSampler(fleet).sample()
        assert row["processes"] == 2  # the worker and its child; not the carrier
        assert row["max_mb"] > 1.0
        assert row["total_mb"] >= row["max_mb"]
    finally:
        grandchildren = psutil.Process(worker.pid).children(recursive=True)
        for p in (worker, other):
            p.kill()
            p.wait()
        for child in grandchildren:
            child.kill()
