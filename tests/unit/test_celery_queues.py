"""Every task is named orderfleet.<stage>.<verb> and routed to a declared queue."""

import re

from config.celery import QUEUES, TASK_ROUTES, celery_config
from config.settings import Settings
from workers.app import app


def _our_tasks() -> dict[str, object]:
    app.loader.import_default_modules()
    return {name: t for name, t in app.tasks.items() if not name.startswith("celery.")}


def test_every_task_is_named_after_its_stage() -> None:
    names = set(_our_tasks())
    assert names, "no tasks registered"
    for name in names:
        assert re.fullmatch(r"orderfleet\.[a-z_]+\.[a-z_]+", name), name


def test_every_task_routes_to_a_declared_queue() -> None:
    declared = {q.name for q in app.conf.task_queues}
    assert declared == set(QUEUES)
    for name, task in _our_tasks().items():
        assert name in TASK_ROUTES, f"{name} has no route in config/celery.py"
        route = app.amqp.router.route({}, name)
        assert route["queue"].name in declared, f"{name} routes to an undeclared queue"
        explicit = getattr(task, "queue", None)
        assert explicit is None or explicit in declared, f"{name} names queue {explicit}"


def test_routes_name_only_existing_tasks_and_declared_queues() -> None:
    tasks = set(_our_tasks())
    for name, queue in TASK_ROUTES.items():
        assert name in tasks, f"route for unknown task {name}"
        assert queue in QUEUES


def test_a_task_naming_an_undeclared_queue_is_caught() -> None:
    # Given a route to a queue nobody declared, the router refuses it (no silent creation).
    cfg = celery_config(Settings())
    assert cfg["task_create_missing_queues"] is False
    import pytest
    from celery import Celery

    other = Celery("check", set_as_current=False)
    other.conf.update({**cfg, "task_routes": {"orderfleet.x.y": {"queue": "nowhere"}}})
    with pytest.raises(Exception, match="nowhere"):
        other.amqp.router.route({}, "orderfleet.x.y")


def test_reliability_settings() -> None:
    conf = app.conf
    assert conf.task_serializer == "json" and list(conf.accept_content) == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.worker_send_task_events and conf.task_send_sent_event
    assert not conf.task_always_eager
    for task in _our_tasks().values():
        assert task.acks_late and task.ignore_result  # type: ignore[attr-defined]


def test_every_pipeline_task_is_registered_and_routed() -> None:
    # Given the pipeline's task names (the one place stages look up where work goes next)
    from domain.pipeline import PIPELINE_TASKS, STAGE_FOR_STATE

    tasks = set(_our_tasks())
    # Then each is a real task with a route, and every automated state has its stage
    for name in PIPELINE_TASKS:
        assert name in tasks, f"domain.pipeline names {name}, which no stage registers"
        assert name in TASK_ROUTES, f"{name} has no route in config/celery.py"
    assert set(STAGE_FOR_STATE.values()) <= set(PIPELINE_TASKS)
