"""The benchmarks' own arithmetic and instruments: percentiles, the message log of the stage
profiler, the worker RSS sampler, CPU per order by group of processes."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from benchmarks.pipeline import RssSampler, cpu_by_process, cpu_ms_per_order, percentile
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


def test_cpu_per_order_is_grouped_and_counts_processes_born_during_the_run() -> None:
    before = {10: ("workers", 1.0), 11: ("workers", 2.0), 20: ("postgres", 5.0)}
    after = {10: ("workers", 1.5), 11: ("workers", 2.5), 20: ("postgres", 5.2),
             21: ("postgres", 0.3), 30: ("redis", 0.0)}
    # 1,000 orders: workers 1.0 s, postgres 0.2 s + 0.3 s from a backend started meanwhile
    assert cpu_ms_per_order(before, after, 1000) == {"workers": 1.0, "postgres": 0.5,
                                                     "total": 1.5}


def test_cpu_by_process_finds_a_busy_worker_and_its_child() -> None:
    # A "worker" whose child burns CPU until told to stop, as a pool child runs tasks.
    code = ("import subprocess, sys; "
            "c = subprocess.Popen([sys.executable, '-c', "
            "'import sys\\nwhile not sys.stdin.closed and sum(range(10**5)) >= 0:\\n"
            "    pass'], stdin=subprocess.PIPE); "
            "print(c.pid, flush=True); sys.stdin.read()")
    worker = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    try:
        assert worker.stdout is not None
        child = int(worker.stdout.readline())
        fleet = Fleet(Settings(), workers=1)
        fleet.procs["worker1"] = worker
        first = cpu_by_process(fleet)
        assert first[worker.pid][0] == first[child][0] == "workers"
        spent = psutil.Process(child).cpu_times()
        give_up = time.monotonic() + 60
        while sum(psutil.Process(child).cpu_times()[:2]) - sum(spent[:2]) < 0.05:
            assert time.monotonic() < give_up, "the busy child got no CPU"
        per_order = cpu_ms_per_order(first, cpu_by_process(fleet), 1)
        assert per_order["workers"] >= 50.0  # ms for the one "order"
        assert "intake (bench process)" in per_order  # this process spent CPU too
    finally:
        grandchildren = psutil.Process(worker.pid).children(recursive=True)
        worker.kill()
        worker.wait()
        for c in grandchildren:
            c.kill()
