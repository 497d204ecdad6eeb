"""Typed settings and the Celery configuration: everything a deployment sets lives here."""

from config.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
