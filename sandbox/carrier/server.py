"""Running the sandbox carrier: in the foreground (``python -m sandbox.carrier``, ``orderfleet
carrier``) or in a background thread (:class:`SandboxCarrierServer`, for tests and demos)."""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn
from starlette.applications import Starlette

from sandbox.carrier.app import create_app
from sandbox.carrier.books import CarrierState
from sandbox.carrier.faults import FaultProfile, add_fault_arguments, faults_from_args
from sandbox.threaded_server import ThreadedServer


def _uvicorn_config(app: Starlette, **kwargs: Any) -> uvicorn.Config:
    # A held ("lost") response must not delay shutdown for its whole hang.
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                          timeout_graceful_shutdown=1, **kwargs)


def serve(host: str, port: int, time_scale: float, seed: int = 0,
          faults: FaultProfile | None = None, easypost_api_key: str | None = None,
          **webhook: Any) -> None:
    """Run the sandbox carrier in the foreground until interrupted."""
    app = create_app(time_scale=time_scale, seed=seed, faults=faults,
                     easypost_api_key=easypost_api_key, **webhook)
    try:
        uvicorn.Server(_uvicorn_config(app, host=host, port=port)).run()
    finally:
        app.state.stop_pushing()


class SandboxCarrierServer(ThreadedServer):
    """The sandbox carrier under uvicorn in a background thread, for tests and demos.

    ``port=0`` binds a free port; read the address from ``url`` after ``start()``::

        with SandboxCarrierServer(time_scale=3600) as carrier:
            CarrierClient(carrier.url)...
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, time_scale: float = 1.0,
                 seed: int = 0, **app_options: Any) -> None:
        super().__init__(create_app(time_scale=time_scale, seed=seed, **app_options), host,
                         port, name="sandbox-carrier")

    @property
    def state(self) -> CarrierState:
        return self.app_state("carrier", CarrierState)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.app.state.stop_pushing()
        super().stop(timeout_s)


def main(argv: list[str] | None = None) -> None:
    """The command line: ``python -m sandbox.carrier --port 8765 --time-scale 3600 ...``."""
    parser = argparse.ArgumentParser(description="Run the orderfleet sandbox carrier.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="carrier seconds per real second (3600 = one carrier hour per second)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--easypost-api-key", default=None,
                        help="the key the EasyPost dialect (/v2) accepts (default: any)")
    parser.add_argument("--webhook-url", default=None,
                        help="push tracking changes here, e.g. http://127.0.0.1:8080/webhooks/"
                             "tracking (orderfleet serve)")
    parser.add_argument("--webhook-secret", default=None, help="sign the pushes with this")
    parser.add_argument("--webhook-interval-s", type=float, default=1.0)
    add_fault_arguments(parser)
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.time_scale, seed=args.seed, faults=faults_from_args(args),
          easypost_api_key=args.easypost_api_key, webhook_url=args.webhook_url,
          webhook_secret=args.webhook_secret, webhook_interval_s=args.webhook_interval_s)
