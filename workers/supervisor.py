"""Keep a fleet's processes running as systemd or Kubernetes would: restart what dies.

``orderfleet up`` stops the whole fleet when one process dies, which suits a laptop. In
production a supervisor restarts the process instead (``deploy/systemd``: ``Restart=always``;
docker-compose: ``restart: unless-stopped``); :class:`Supervisor` does the same for a local
fleet, so that ``orderfleet chaos`` can kill processes the way a crash or the OOM killer would.
Like systemd's ``KillMode=control-group``, what is left of a dead process's group (a worker's
pool children) is killed before the process is started again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

from workers.fleet import Fleet

log = logging.getLogger(__name__)

# Stand-ins keep their books in memory: restarting one would hide what it saw.
NOT_RESTARTED = frozenset({"carrier", "redis"})


@dataclass
class Restart:
    name: str
    at: float  # time.time()
    exit_code: int | None


@dataclass
class Supervisor:
    """Watches ``fleet`` every ``interval_s`` and restarts dead processes (after ``backoff_s``,
    as systemd's ``RestartSec``)."""

    fleet: Fleet
    interval_s: float = 0.2
    backoff_s: float = 0.5
    restarts: list[Restart] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _paused: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextlib.contextmanager
    def paused(self, name: str):  # type: ignore[no-untyped-def]
        """Leave ``name`` alone while the caller stops and starts it itself."""
        with self._lock:
            self._paused.add(name)
        try:
            yield
        finally:
            with self._lock:
                self._paused.discard(name)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                for name, proc in list(self.fleet.procs.items()):
                    if name in NOT_RESTARTED or name in self._paused:
                        continue
                    if proc.poll() is not None:
                        self.restart(name, proc)

    def restart(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        """Kill what is left of the process group, then start the same command again."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.restarts.append(Restart(name, time.time(), proc.returncode))
        log.warning("%s exited with %s: restarting it", name, proc.returncode)
        time.sleep(self.backoff_s)
        self.fleet._spawn(name, self.fleet.commands[name])
