# EventFlow: `make run` (everything up on the embedded default) and `make test`.
VENV ?= .venv
PYTHON ?= python3
FLASK = $(VENV)/bin/flask --app wsgi
PORT ?= 5000
export PORT

.PHONY: install run worker test lint format bench clean

$(VENV)/.installed: requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

install: $(VENV)/.installed

## run: migrate, ensure an admin, then web (gunicorn) + worker on http://127.0.0.1:$(PORT); Ctrl-C stops both
run: install
	$(FLASK) db upgrade
	$(FLASK) users ensure-admin
	@echo "EventFlow on http://127.0.0.1:$(PORT)  (API /api/v1, dashboard /dashboard; Ctrl-C stops)"
	@$(FLASK) worker & worker=$$!; \
	trap 'kill -TERM $$worker 2>/dev/null; wait $$worker' EXIT INT TERM; \
	GUNICORN_WORKERS=$${GUNICORN_WORKERS:-1} $(VENV)/bin/gunicorn -c gunicorn.conf.py wsgi:app

## test: the whole suite (real PostgreSQL + Redis; DATABASE_URL / REDIS_URL when set), in
## TEST_PROCESSES processes, a test file to each (its module's servers start once); each process
## uses its own database (DATABASE_URL's, then `…_gw1`, …) and Redis database (REDIS_URL's, then
## the one below it, …)
TEST_PROCESSES ?= 2
test: install
	$(VENV)/bin/pytest -n $(TEST_PROCESSES) --dist loadfile

## lint: ruff (style), then mypy --strict on eventflow/ (config in pyproject.toml)
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## bench: ingest and processing benchmarks (see BENCHMARKS.md)
bench: install
	$(VENV)/bin/python bench/ingest.py
	$(VENV)/bin/python bench/process.py

clean:
	rm -rf $(VENV) instance .pytest_cache
