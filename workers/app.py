"""The Celery app. Workers start it with ``celery -A workers.app worker``."""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_process_init

from config.celery import TASK_MODULES, celery_config
from config.settings import get_settings


def create_app() -> Celery:
    settings = get_settings()  # validated here: a bad setting stops the worker at start
    app = Celery("orderfleet", include=list(TASK_MODULES))
    app.conf.update(celery_config(settings))
    return app


app = create_app()


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    # A prefork child must not share the parent's database connections.
    from domain.db import dispose_engines

    dispose_engines()
    logging.getLogger("orderfleet").setLevel(logging.INFO)
