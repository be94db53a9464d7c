# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
FLASK   = $(BIN)/flask --app wsgi
PYTEST_ARGS ?=

.PHONY: run test install install-test migrate-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-test: requirements.txt requirements-test.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-test.txt
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

## make run: install, upgrade the database, create missing secrets, the first admin and signing key, serve on :8080
run: install
	$(FLASK) db upgrade
	$(FLASK) setup
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

## make test: install with test requirements, then the whole suite (TEST_DATABASE_URL picks PostgreSQL)
test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## make migrate-check: migrations on an empty database equal the models
migrate-check: install
	$(FLASK) db upgrade
	$(FLASK) db check

clean:
	rm -rf $(VENV) .pytest_cache
