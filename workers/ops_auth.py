"""Credentials of the ops tools (Flower, the order-health page): always required.

``ORDERFLEET_OPS_BASIC_AUTH=user:password`` sets them; when unset, ``up``, ``demo``, ``serve``
and ``flower`` generate a password and print it, as notebook servers print their token.
Flower gets them through its environment (``FLOWER_BASIC_AUTH``), never on a command line
that ``ps`` shows to every local user.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets

from pydantic import SecretStr

from config.settings import Settings

OPS_USER = "ops"


def with_ops_credentials(settings: Settings, *,
                         export: bool = False) -> tuple[Settings, bool]:
    """``settings`` with ops credentials, generated when unset; True when generated.

    ``export`` also puts a generated value into this process's environment, for children
    that read their settings from it (uvicorn's worker processes).
    """
    if settings.ops_basic_auth is not None:
        return settings, False
    value = f"{OPS_USER}:{secrets.token_urlsafe(18)}"
    if export:
        os.environ["ORDERFLEET_OPS_BASIC_AUTH"] = value
    return settings.model_copy(update={"ops_basic_auth": SecretStr(value)}), True


def credentials(settings: Settings) -> tuple[str, str]:
    if settings.ops_basic_auth is None:
        raise RuntimeError("ops_basic_auth is unset: call with_ops_credentials first")
    user, _, password = settings.ops_basic_auth.get_secret_value().partition(":")
    return user, password


def flower_env(settings: Settings) -> dict[str, str]:
    """Flower's options from its environment: basic auth (its API needs auth to work)."""
    return {"FLOWER_BASIC_AUTH": ":".join(credentials(settings))}


def flower_args(settings: Settings, port: int, address: str) -> list[str]:
    """Flower's command-line options: persistent state in var_dir, bounded memory."""
    return [f"--port={port}", f"--address={address}", "--max_tasks=10000",
            "--persistent=True", f"--db={settings.var_dir / 'flower-state'}",
            "--state_save_interval=60000"]


def basic_auth_matches(header: str | None, settings: Settings) -> bool:
    """True for an ``Authorization: Basic ...`` header carrying the ops credentials."""
    if settings.ops_basic_auth is None or not header:
        return False
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    expected = settings.ops_basic_auth.get_secret_value().encode()
    return hmac.compare_digest(given, expected)


def describe(settings: Settings) -> str:
    user, password = credentials(settings)
    return f"user {user!r}, password {password!r}"
