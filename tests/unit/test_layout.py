"""The rooms keep their jobs: the import contracts in pyproject.toml hold, and importing a rule
builds no Celery app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold(capsys, monkeypatch) -> None:
    # Layers workers -> tasks -> domain -> config, stages independent, no Celery in domain,
    # stand-ins and benchmarks outside the fleet (pyproject.toml, [tool.importlinter]).
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    code = lint_imports(no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "0 broken" in out


def test_the_import_graph_has_no_cycle_and_no_outward_import() -> None:
    result = subprocess.run([sys.executable, "scripts/import_graph.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout
    assert "outward imports: 0" in result.stdout
    assert "stage -> stage imports: 0" in result.stdout
    assert "import cycles: 0" in result.stdout


def test_importing_the_domain_builds_no_celery_app_and_reads_no_settings() -> None:
    # A fresh interpreter with a broken environment: importing every rule must still work.
    code = (
        "import os, sys, pkgutil, importlib\n"
        "os.environ['ORDERFLEET_BROKER_URL'] = 'not-a-url'\n"
        "import domain\n"
        "for m in pkgutil.walk_packages(domain.__path__, 'domain.'):\n"
        "    importlib.import_module(m.name)\n"
        "assert 'celery' not in sys.modules, 'domain imported celery'\n"
        "assert 'workers.app' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_importing_a_stage_builds_no_celery_app() -> None:
    code = (
        "import os, sys, importlib\n"
        "os.environ['ORDERFLEET_BROKER_URL'] = 'not-a-url'\n"
        "for m in ('tasks.fraud', 'tasks.inventory', 'tasks.sharding', 'tasks.labels',\n"
        "          'tasks.tracking', 'tasks.pushback', 'tasks.cancellation', 'tasks.sweeps'):\n"
        "    importlib.import_module(m)\n"
        "assert 'workers.app' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
