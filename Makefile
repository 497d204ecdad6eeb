# orderfleet: the commands users and CI run. `make demo` and `make test` do all their set-up.
VENV ?= .venv
PY := $(VENV)/bin/python
ORDERS ?= 2000
BENCH_ORDERS ?= 5000
PG_ADMIN_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
BENCH_DB_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/orderfleet_bench

.PHONY: install test test-fast lint demo bench up clean tools check-rules chaos

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Two pytest-xdist workers, each on its own database and Redis db; the end-to-end tests keep to
# one of them (tests/e2e/conftest.py). On a 2-core machine this is 1.7-1.8x faster than one
# process, as the suite mostly waits on carrier time, beat ticks and worker processes.
# PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup

test: install tools check-rules
	bash scripts/ensure-services.sh
	$(PYTEST)

# promtool (Debian's prometheus) and headless Chromium, installed when missing: the alert
# rules and the order-health page are tested with them.
tools:
	bash scripts/ensure-tools.sh

# The alert rules parse, and each fires (and stays quiet) as its unit tests say.
check-rules: tools
	promtool check rules ops/prometheus/rules/*.yml
	promtool test rules ops/prometheus/tests/*.yml
	promtool check config --syntax-only ops/prometheus/prometheus.yml

# The inner loop: unit and integration tests, not the end-to-end ones (real worker fleets).
test-fast: install tools
	bash scripts/ensure-services.sh
	$(PYTEST) -m "not e2e"

# Style, types (pydantic plugin) and the import contracts between rooms.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

demo: install
	$(VENV)/bin/orderfleet demo --orders $(ORDERS)

up: install
	$(VENV)/bin/orderfleet up

bench: install
	bash scripts/ensure-services.sh
	$(PY) scripts/create_database.py "$(PG_ADMIN_URL)" orderfleet_bench
	$(VENV)/bin/orderfleet bench --orders $(BENCH_ORDERS) --database-url "$(BENCH_DB_URL)"

# Kill, restart and starve a supervised fleet (its own Redis and PostgreSQL) and check that no
# order is lost or done twice. CHAOS_ARGS=--short for the form CI runs; --json for the figures.
CHAOS_ARGS ?=
chaos: install
	$(VENV)/bin/orderfleet chaos $(CHAOS_ARGS)

clean:
	rm -rf var .pytest_cache .ruff_cache
