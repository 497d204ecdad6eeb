"""docker-compose's ops services are wired to files that exist and to each other (no Docker
engine is needed to check the wiring)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    doc: dict = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return doc


def test_every_mounted_ops_file_is_in_the_repository():
    for name in ("prometheus", "grafana"):
        for volume in compose()["services"][name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_prometheus_scrapes_the_exporter_service_on_its_port_and_loads_the_rules():
    services = compose()["services"]
    exporter_cmd = services["exporter"]["command"]
    port = exporter_cmd[exporter_cmd.index("--port") + 1]
    config = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["orderfleet"]["static_configs"][0]["targets"] == [f"exporter:{port}"]
    assert "/etc/prometheus/rules/*.yml" in config["rule_files"]
    assert any(v.endswith(":/etc/prometheus/rules:ro")
               for v in services["prometheus"]["volumes"])


def test_grafana_provisions_the_prometheus_datasource_the_dashboard_uses():
    import json

    ds = yaml.safe_load(
        (ROOT / "ops/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    dashboard = json.loads((ROOT / "ops/grafana/dashboards/orderfleet.json").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {uid}
    provider = yaml.safe_load(
        (ROOT / "ops/grafana/provisioning/dashboards/orderfleet.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert any(v.endswith(f":{path}:ro") for v in compose()["services"]["grafana"]["volumes"])


def test_flower_and_grafana_refuse_to_start_without_credentials():
    services = compose()["services"]
    assert ":?" in services["flower"]["environment"]["ORDERFLEET_OPS_BASIC_AUTH"]
    assert ":?" in services["api"]["environment"]["ORDERFLEET_OPS_BASIC_AUTH"]
    assert ":?" in services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert any(v.startswith("flowerdata:") for v in services["flower"]["volumes"])
