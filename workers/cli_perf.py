"""``orderfleet bench stages`` and ``orderfleet bench soak``: where the CPU goes, and whether
the workers' memory stays flat over a long run."""

from __future__ import annotations

import json
from pathlib import Path

import click


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
