"""The sandbox carrier's fault profile: draws, validation naming the field, CLI flags."""

import argparse

import pytest

from sandbox.carrier import FaultProfile, add_fault_arguments, faults_from_args
from sandbox.carrier.errors import BadRequest


def test_draws_follow_the_configured_shares() -> None:
    profile = FaultProfile(error_rate=0.1, rate_limit_rate=0.2, timeout_rate=0.3, lost_rate=0.1)
    assert profile.draw(0.05) == "error"
    assert profile.draw(0.15) == "rate_limit"
    assert profile.draw(0.45) == "timeout"
    assert profile.draw(0.65) == "lost"
    assert profile.draw(0.75) is None
    assert profile.fault_rate == pytest.approx(0.7)


def test_no_faults_by_default() -> None:
    assert FaultProfile().draw(0.0) is None


@pytest.mark.parametrize(("body", "field"), [
    ({"error_rate": 1.5}, "error_rate"),
    ({"lost_rate": -0.1}, "lost_rate"),
    ({"error_rate": 0.6, "lost_rate": 0.6}, "exceeds 1"),
    ({"hang_s": "long"}, "hang_s"),
    ({"carriers": ["sbx-teleport"]}, "carrier"),
    ({"carriers": "sbx-air"}, "carriers"),
    ({"seed": 1.5}, "seed"),
    ({"eror_rate": 0.1}, "eror_rate"),
])
def test_a_bad_setting_is_refused_naming_the_field(body: dict, field: str) -> None:
    with pytest.raises(BadRequest) as refused:
        FaultProfile.from_json(body)
    assert field in refused.value.message


def test_a_valid_request_round_trips() -> None:
    body = {"error_rate": 0.12, "rate_limit_rate": 0.06, "retry_after_s": 0.5,
            "timeout_rate": 0.06, "lost_rate": 0.06, "hang_s": 1.5, "carriers": ["sbx-air"],
            "duration_s": 8, "seed": 3}
    profile = FaultProfile.from_json(body)
    assert profile.carriers == ("sbx-air",)
    assert FaultProfile.from_json(profile.to_json()) == profile


def test_cli_flags_build_the_profile() -> None:
    parser = argparse.ArgumentParser()
    add_fault_arguments(parser)
    args = parser.parse_args(["--error-rate", "0.1", "--lost-rate", "0.2", "--hang-s", "3",
                              "--fault-carriers", "sbx-post", "--latency-ms", "20"])
    profile = faults_from_args(args)
    assert (profile.error_rate, profile.lost_rate, profile.hang_s) == (0.1, 0.2, 3.0)
    assert profile.carriers == ("sbx-post",) and profile.latency_ms == 20.0
    with pytest.raises(SystemExit, match="error_rate"):
        faults_from_args(parser.parse_args(["--error-rate", "2"]))
