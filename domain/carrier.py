"""Kept for existing imports: the carrier adapters live in ``domain.carriers``."""

from domain.carriers import *  # noqa: F403
from domain.carriers import __all__  # noqa: F401
from domain.carriers.base import HttpTransport  # noqa: F401
