"""The Kubernetes manifests: every queue the fleet works is consumed and scaled on its length."""

from pathlib import Path

import yaml

from config.celery import QUEUES, WORKER_QUEUE_ORDER
from config.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
# Only the benchmark's no-op chain is not deployed.
NOT_DEPLOYED = {"bench"}


def _docs() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _deployments() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in _docs() if d["kind"] == "Deployment"}


def _queues_of(deployment: dict) -> list[str]:
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args[args.index("-Q") + 1].split(",") if "-Q" in args else []


def test_every_queue_is_consumed_by_a_deployment_in_the_workers_order() -> None:
    consumed: list[str] = []
    for dep in _deployments().values():
        queues = _queues_of(dep)
        # A group lists its queues in the fleet's consumption order (fast lanes first).
        assert queues == sorted(queues, key=WORKER_QUEUE_ORDER.index)
        consumed += queues
    assert sorted(consumed) == sorted(set(QUEUES) - NOT_DEPLOYED)


def test_every_queue_has_a_redis_list_scaler_on_its_deployment() -> None:
    deployments = _deployments()
    auths = {d["metadata"]["name"] for d in _docs() if d["kind"] == "TriggerAuthentication"}
    scaled = [d for d in _docs() if d["kind"] == "ScaledObject"]
    targets = [s["spec"]["scaleTargetRef"]["name"] for s in scaled]
    assert len(targets) == len(set(targets)), "KEDA allows one ScaledObject per Deployment"
    scaled_queues: dict[str, str] = {}
    for so in scaled:
        target = so["spec"]["scaleTargetRef"]["name"]
        assert target in deployments
        for trig in so["spec"]["triggers"]:
            assert trig["type"] == "redis"
            meta = trig["metadata"]
            assert {"listName", "listLength", "activationListLength"} <= set(meta)
            assert "password" not in meta and "passwordFromEnv" not in meta
            assert trig["authenticationRef"]["name"] in auths
            assert meta["listName"] in _queues_of(deployments[target])
            scaled_queues[meta["listName"]] = target
        behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60
    assert set(scaled_queues) == set(QUEUES) - NOT_DEPLOYED


def test_workers_get_a_grace_period_above_the_longest_task() -> None:
    longest = Settings().task_time_limit_s
    for name, dep in _deployments().items():
        if name.startswith("orderfleet-worker-"):
            assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > longest


def test_the_pipeline_and_control_loop_never_scale_to_zero() -> None:
    # The list scaler cannot see reserved-but-unacked messages: keep one pod where they matter.
    for so in (d for d in _docs() if d["kind"] == "ScaledObject"):
        if so["metadata"]["name"] != "orderfleet-worker-noncore":
            assert so["spec"]["minReplicaCount"] >= 1
