"""The fuzz run in short (``orderfleet bench fuzz`` fires 10,000+ at a real process): bad
input of every kind, signed and unsigned, never gets a 5xx and unsigned input writes nothing."""

from __future__ import annotations

from benchmarks.fuzz import (
    KINDS,
    fire_inputs,
    fuzz_inputs,
    fuzz_settings_overrides,
    unsigned_rows_written,
)
from sandbox.threaded_server import ThreadedServer
from workers.api import create_app


def test_a_short_fuzz_run_gets_no_5xx_and_unsigned_input_writes_nothing(db, broker,
                                                                        settings) -> None:
    s = settings.model_copy(update={**fuzz_settings_overrides(), "api_flush_interval_s": 0.02,
                                    "api_max_body_bytes": 200_000})
    inputs = [i for i in fuzz_inputs(600, seed=3) if i.kind != "huge_body"]
    assert {i.kind for i in inputs} >= set(KINDS) - {"huge_body"}
    with ThreadedServer(create_app(s), lifespan="on") as server:
        result = fire_inputs(server.url, inputs, concurrency=4)
    assert result.server_errors == 0 and result.connection_errors == 0, result.to_json()
    assert sum(result.codes.values()) == len(inputs)
    assert result.codes["401"] >= sum(1 for i in inputs if not i.signed) - result.codes["413"]
    assert unsigned_rows_written(s) == 0
