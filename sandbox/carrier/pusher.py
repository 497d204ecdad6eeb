"""Tracking pushes: the sandbox carrier tells a webhook when its parcels move."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import unicodedata

import httpx

from sandbox.carrier.books import CarrierState
from sandbox.carrier.errors import BadRequest


class TrackingPusher:
    """Pushes tracker changes to a webhook, as carriers' tracking webhooks do.

    Every ``interval_s`` it sends the trackers whose status changed since the last successful
    push, as ``{"trackers": [...]}`` in the carrier's own format, signed like EasyPost's
    webhooks (``X-Hmac-Signature: hmac-sha256-hex=...``) when a secret is set. A failed push
    is sent again on the next round.
    """

    def __init__(self, state: CarrierState, url: str, secret: str | None = None,
                 interval_s: float = 1.0) -> None:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise BadRequest("url: must be an http(s) URL")
        if not interval_s > 0:
            raise BadRequest("interval_s: must be positive")
        self.state, self.url, self.secret, self.interval_s = state, url, secret, interval_s
        self._pushed: dict[str, str] = {}  # tracking number -> status last pushed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox-carrier-push",
                                        daemon=True)

    def start(self) -> TrackingPusher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def push_once(self) -> int:
        """Push what changed; returns the number of trackers delivered to the webhook."""
        with self.state.lock:
            now = self.state.clock()
            changed = [t for t in (self.state.tracker(n, now) for n in self.state.by_tracking)
                       if self._pushed.get(t["tracking_number"]) != t["status"]]
        sent = 0
        for start in range(0, len(changed), 500):
            chunk = changed[start:start + 500]
            body = json.dumps({"trackers": chunk}).encode()
            headers = {"Content-Type": "application/json"}
            if self.secret:
                digest = hmac.new(unicodedata.normalize("NFKD", self.secret).encode(), body,
                                  hashlib.sha256).hexdigest()
                headers["X-Hmac-Signature"] = f"hmac-sha256-hex={digest}"
            try:
                ok = httpx.post(self.url, content=body, headers=headers, timeout=10).is_success
            except (httpx.HTTPError, httpx.InvalidURL):
                ok = False  # the receiver is down: pushed again next round
            with self.state.lock:
                if ok:
                    self.state.stats.pushes += 1
                else:
                    self.state.stats.push_failures += 1
            if ok:
                self._pushed.update({t["tracking_number"]: t["status"] for t in chunk})
                sent += len(chunk)
        return sent

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.push_once()


class PusherSlot:
    """The one pusher a carrier runs at a time, or none; replacing it stops the old one."""

    def __init__(self) -> None:
        self.current: TrackingPusher | None = None

    def replace(self, new: TrackingPusher | None) -> None:
        old, self.current = self.current, new
        if old is not None:
            old.stop()
        if new is not None:
            new.start()

    def stop(self) -> None:
        self.replace(None)
