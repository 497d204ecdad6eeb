# orderfleet: the commands users and CI run. `make demo` and `make test` do all their set-up.
VENV ?= .venv
PY := $(VENV)/bin/python
ORDERS ?= 2000
BENCH_ORDERS ?= 5000
PG_ADMIN_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
BENCH_DB_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/orderfleet_bench

.PHONY: install test lint demo bench up clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	bash scripts/ensure-services.sh
	$(PY) -m pytest

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

clean:
	rm -rf var .pytest_cache .ruff_cache
