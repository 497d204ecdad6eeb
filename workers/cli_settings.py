"""The settings every ``orderfleet`` command starts from."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from pydantic import ValidationError
from rich.console import Console

if TYPE_CHECKING:
    from config.settings import Settings


def load_settings() -> Settings:
    """The validated settings (a bad one stops the command with exit status 2); also loads the
    Celery app, which installs how this process sends tasks (cancel, approve, replay, retry and
    stock imports enqueue work)."""
    from config.settings import get_settings

    try:
        settings = get_settings()
    except ValidationError as exc:
        Console(stderr=True).print(f"[red]invalid configuration:[/red]\n{exc}")
        sys.exit(2)
    import workers.app  # noqa: F401 - the composition root

    return settings
