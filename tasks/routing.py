"""Learned routing's upkeep, on beat: retrain on recorded outcomes; flag SKUs often returned."""

from __future__ import annotations

import logging

from celery import Task

from config.settings import get_settings
from domain.db import unit_of_work
from domain.returns import flag_high_return_skus
from domain.route_learning import retrain as retrain_models
from tasks.base import retry_on_transient, stage_task

log = logging.getLogger(__name__)


@stage_task("orderfleet.routing.retrain")
def retrain(task: Task) -> None:
    settings = get_settings()
    with retry_on_transient(task), unit_of_work(settings) as uow:
        model_id, rows = retrain_models(uow.session, settings.routing_min_training_rows)
        flagged = flag_high_return_skus(uow, settings.sku_return_rate_alert,
                                        settings.sku_return_min_shipped)
    if model_id is None:
        log.info("routing model not retrained: %d outcomes recorded, %d needed", rows,
                 settings.routing_min_training_rows)
    else:
        log.info("routing model %s trained on %d outcomes", model_id, rows)
    if flagged:
        log.warning("SKUs above the return-rate line: %s", ", ".join(flagged))
