"""A local SMTP server (aiosmtpd) that keeps every message it accepts, for local runs and tests.

Non-core e-mails go over real SMTP: ``orderfleet up``, ``demo`` and the tests start this sink;
production points ``ORDERFLEET_SMTP_HOST``/``_PORT`` at a real mail server instead. Messages are
appended to a JSON-lines file (one object per message: from, to, subject, message_id, job) so a
test or person can count what was sent. Run it with ``python -m sandbox.smtp --port 8025``.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class KeepMessages:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        msg = message_from_bytes(envelope.content, policy=default_policy)
        row = {"at": time.time(), "from": envelope.mail_from, "to": list(envelope.rcpt_tos),
               "subject": str(msg.get("Subject", "")),
               "message_id": str(msg.get("Message-ID", "")),
               "job": str(msg.get("X-Orderfleet-Job", ""))}
        with self.lock, self.out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        return "250 Message accepted for delivery"


class SmtpSink:
    """The sink in a background thread (tests); ``messages()`` reads what it kept."""

    def __init__(self, out: Path, host: str = "127.0.0.1", port: int = 8025) -> None:
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.touch()
        self.controller = Controller(KeepMessages(out), hostname=host, port=port)

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def messages(self) -> list[dict[str, Any]]:
        return read_messages(self.out)


def read_messages(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run orderfleet's local SMTP sink.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--out", default="var/mail/messages.jsonl",
                        help="JSON-lines file that receives one object per message")
    args = parser.parse_args(argv)
    sink = SmtpSink(Path(args.out), args.host, args.port).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    sink.stop()


if __name__ == "__main__":
    main()
