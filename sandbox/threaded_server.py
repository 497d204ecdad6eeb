"""A Starlette app under uvicorn in a background thread: the sandboxes' way to run in tests."""

from __future__ import annotations

import socket
import threading
import time
from typing import Literal, Self, TypeVar

import httpx
import uvicorn
from starlette.applications import Starlette

T = TypeVar("T")


class ThreadedServer:
    """Serve ``app`` on a port this object binds itself; ``port=0`` picks a free one."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0,
                 lifespan: Literal["auto", "on", "off"] = "off", name: str = "http") -> None:
        self.app, self._host, self._port, self._lifespan = app, host, port, lifespan
        self._name = name
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.url = ""

    def start(self, timeout_s: float = 10.0) -> str:
        # Bound here, so port 0 means a free port with no race. IPPROTO_TCP, not 0: asyncio
        # sets TCP_NODELAY only on sockets that say so, and without it every keep-alive
        # response waits ~40 ms (Nagle vs delayed ACK).
        ipv6 = ":" in self._host
        family = socket.AF_INET6 if ipv6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        self._socket = sock
        host, port = sock.getsockname()[:2]
        self.url = f"http://[{host}]:{port}" if ipv6 else f"http://{host}:{port}"
        # A held response must not delay shutdown for its whole hang.
        config = uvicorn.Config(self.app, log_level="warning", access_log=False,
                                lifespan=self._lifespan,
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"{self._name}-{port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self.url
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"{self._name} did not become healthy at {self.url}")
            time.sleep(0.02)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def app_state(self, name: str, kind: type[T]) -> T:
        """The app's ``state.<name>``, checked to be a ``kind`` (Starlette's state is untyped)."""
        value = getattr(self.app.state, name)
        if not isinstance(value, kind):
            raise TypeError(f"app.state.{name} is a {type(value).__name__}, not {kind.__name__}")
        return value

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
