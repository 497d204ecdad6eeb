"""``orderfleet bench fraud``: the real stage on a labelled stream, figures as promised."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from workers.cli import main as cli

# Both benchmarks empty and use the bench's Redis db of the test Redis server: one at a time.
pytestmark = pytest.mark.xdist_group("bench-redis-db")


def test_bench_fraud_prints_accuracy_per_pattern_and_cost(broker, settings, tmp_path) -> None:
    # Given a labelled stream of a seed the rules were not tuned on
    db_url = f"sqlite:///{tmp_path / 'fraud-bench.db'}"
    result = CliRunner().invoke(cli, ["bench", "fraud", "--seed", "3", "--orders", "2000",
                                      "--database-url", db_url, "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    # Then the JSON carries the overall figures and one entry per pattern
    for key in ("precision", "recall", "false_positive_rate", "ms_per_order", "patterns"):
        assert key in figures
    assert figures["orders"] == 2000 and figures["fraud_orders"] == 100
    assert {"card_testing", "mismatched_countries", "high_value_first_order",
            "avs_cvv_failure", "reshipper", "legit_new"} <= set(figures["patterns"])
    # ... and the check is worth having (the full 5,000-order runs reach recall >= 95% at FPR <= 2%)
    assert figures["recall"] >= 0.9 and figures["false_positive_rate"] <= 0.03
    assert figures["precision"] >= 0.6
    assert 0 < figures["ms_per_order"] < 5  # generous: a busy CI machine, no timing claim
    # ... and the velocity counters of the run are gone from Redis
    assert not list(broker.scan_iter(match="*:bench:*"))


def test_plain_bench_keeps_its_options_beside_the_fraud_subcommand() -> None:
    out = CliRunner().invoke(cli, ["bench", "--help"]).output
    for option in ("--orders", "--workers", "--concurrency", "--database-url", "--json"):
        assert option in out
    assert "fraud" in out
