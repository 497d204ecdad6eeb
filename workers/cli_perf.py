"""``orderfleet bench stages`` and ``orderfleet bench soak``: where the CPU goes, and whether
the workers' memory stays flat over a long run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def bench_options(fn: F) -> F:
    """The options ``orderfleet bench`` adds to its original ones (orders, workers, ...)."""
    options = [
        click.option("--carrier-port", type=int, default=None,
                     help="Port of the sandbox carrier the fleet starts (default: "
                          "carrier_url's)."),
        click.option("--black-friday-orders", type=int, default=12_000, show_default=True,
                     help="Orders paid at once for the drain figure (0: skip)."),
        click.option("--load-seconds", type=float, default=10.0, show_default=True,
                     help="Seconds of each offered-load step (25/50/75/100%% of capacity; "
                          "0: skip)."),
        click.option("--sweep-orders", type=int, default=2000, show_default=True,
                     help="Orders of the burst run with 1, 2 and 4 worker processes (0: skip)."),
        click.option("--out-dir", type=click.Path(path_type=Path), default=None,
                     help="Where the JSON result and the PNG plot go (default var/bench)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.command("stages")
@click.option("--orders", "n_orders", default=2000, show_default=True,
              help="Orders measured (after the warm-up).")
@click.option("--warmup", default=300, show_default=True,
              help="Orders run through every stage first, not measured.")
@click.option("--database-url", default=None,
              help="A database named *bench* (wiped); default var/bench-stages.db (SQLite).")
@click.option("--carrier-port", type=int, default=None,
              help="Port of the sandbox carrier started for the run (default: carrier_url's).")
@click.option("--profile", type=click.Choice(["cprofile", "pyinstrument"]), default=None,
              help="Also write a profile of each stage.")
@click.option("--profile-dir", type=click.Path(path_type=Path), default=None,
              help="Where the profiles go (default var/profiles).")
@click.option("--callgrind", is_flag=True,
              help="Count instructions per stage (run under valgrind --tool=callgrind "
                   "--instr-atstart=no).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_stages(n_orders: int, warmup: int, database_url: str | None, carrier_port: int | None,
                 profile: str | None, profile_dir: Path | None, callgrind: bool,
                 as_json: bool) -> None:
    """CPU ms per order in each stage (intake, fraud, inventory, sharding, labels)."""
    from benchmarks.stages import run_stage_profile

    result = run_stage_profile(n_orders=n_orders, warmup=warmup, database_url=database_url,
                               carrier_port=carrier_port, profile=profile,
                               profile_dir=profile_dir, callgrind=callgrind, quiet=as_json)
    if as_json:
        click.echo(json.dumps(result))


@click.command("soak")
@click.option("--orders", "n_orders", default=1_000_000, show_default=True)
@click.option("--workers", default=2, show_default=True, help="Celery worker processes.")
@click.option("--concurrency", default=1, show_default=True)
@click.option("--backlog", default=5000, show_default=True,
              help="Orders in flight at most (paid, not yet labelled).")
@click.option("--sample-s", default=5.0, show_default=True, help="Seconds between RSS samples.")
@click.option("--database-url", default=None,
              help="A database named *bench* (wiped); default var/bench.db (SQLite).")
@click.option("--carrier-port", type=int, default=None,
              help="Port of the sandbox carrier the fleet starts (default: carrier_url's).")
@click.option("--out-dir", type=click.Path(path_type=Path), default=None,
              help="Where the JSON result and the PNG plot go (default var/bench).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_soak(n_orders: int, workers: int, concurrency: int, backlog: int, sample_s: float,
               database_url: str | None, carrier_port: int | None, out_dir: Path | None,
               as_json: bool) -> None:
    """The workers' RSS over a long run (flat, or a leak?)."""
    from benchmarks.pipeline import run_soak

    result = run_soak(n_orders=n_orders, workers=workers, concurrency=concurrency,
                      quiet=as_json, database_url=database_url, carrier_port=carrier_port,
                      backlog=backlog, sample_s=sample_s, out_dir=out_dir)
    if as_json:
        click.echo(json.dumps(result))
