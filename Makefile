# scorestream: every command people and CI use. `make help` lists them.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: help install kafka browser promtool run demo test test-unit lint format schemas bench bench-tools peer clean
.DEFAULT_GOAL := help

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## create .venv and install the project with its pinned dependencies

kafka: ## fetch the Kafka jars from Maven Central (once)
	bash deploy/kafka/kafka.sh fetch

CHROMIUM := /usr/lib/chromium/chromium
BROWSER_LOCK := tests/browser/package-lock.json
BROWSER_STAMP := tests/browser/node_modules/.installed-$(shell cksum $(BROWSER_LOCK) | cut -d' ' -f1)
$(BROWSER_STAMP): $(BROWSER_LOCK) tests/browser/package.json
	command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq npm)
	cd tests/browser && npm ci --no-audit --no-fund --ignore-scripts
	touch $@

browser: $(BROWSER_STAMP) ## Debian's chromium and Segment's browser SDK (npm ci) for the browser test (apt-get: needs root)
	test -x $(CHROMIUM) || (apt-get update -qq && apt-get install -y -qq chromium)

promtool: ## promtool (from Debian's prometheus package, into .venv/bin; no daemon) for the tests of the alert rules and dashboard
	test -x $(BIN)/promtool || command -v promtool >/dev/null || ( \
	  cd $(VENV) && (apt-get download -qq prometheus || (apt-get update -qq && apt-get download -qq prometheus)) \
	  && dpkg-deb --fsys-tarfile prometheus_*.deb | tar -xO ./usr/bin/promtool > bin/promtool \
	  && chmod +x bin/promtool && rm -f prometheus_*.deb)

run: install kafka ## the whole service on embedded defaults: local Kafka, worker, API (Ctrl-C stops)
	$(BIN)/scorestream run

demo: install ## publish realistic mixed traffic to a running service and watch scores move
	$(BIN)/scorestream demo

test: install kafka browser promtool ## the whole suite, end-to-end tests on a real local broker and in Chromium included
	$(BIN)/pytest

test-unit: install ## only the tests that need no broker
	$(BIN)/pytest -m "not kafka"

lint: install ## ruff and mypy (strict)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

schemas: install ## regenerate schemas/json/*.json from the models
	$(BIN)/python -m schemas.generate

clean: ## remove local state (var/) and the virtualenv
	rm -rf var $(VENV) .venv-peer

PEER_STAMP := .venv-peer/.installed-quixstreams-3.28.1
$(PEER_STAMP):
	test -x .venv-peer/bin/python || $(PY) -m venv .venv-peer
	.venv-peer/bin/python -m pip install -q --upgrade pip
	.venv-peer/bin/python -m pip install -q quixstreams==3.28.1 confluent-kafka==2.12.2 msgspec==0.22.0 orjson==3.13.0 pyyaml==6.0.3
	touch $@

peer: $(PEER_STAMP) ## the Quix Streams peer's own virtualenv (its pydantic pin differs from ours)

bench-tools: ## install the load generator the API benchmark uses (wrk; apt-get, needs root)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)

bench: install kafka peer bench-tools ## benchmarks on a local broker; writes bench/results/<date>-<name>.json and .md
	$(BIN)/python -m bench.run $(BENCH_ARGS)
