# Two commands do all the set-up on a fresh machine with only Python 3.11+:
#   make run   - create .venv, install, start the whole stack (scorecast dev)
#   make test  - create .venv, install, lint, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed


.PHONY: run test test-faults test-stack lint format clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml loadtest/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e ./loadtest
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/scorecast dev $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/typecheck.py

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Quiet by default: a dot per test (node) and per test (pytest), failures in
# full. `make test PYTEST_ARGS=-v` for every test's name.
test: lint
	@bash scripts/system-deps.sh
	@echo "node --test tests/js/ (the browser client's unit tests)"
	@node --test --test-reporter=dot tests/js/
	@echo "pytest"
	@$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The fault-injection suite (tests/faults, ~5 minutes): real processes through
# NATS frozen, bursts, a stalled gateway, a killed JetStream leader, churn,
# slow clients at scale. One line of figures per scenario; non-zero on any
# violation. Figures also land in .faults-results.jsonl (docs/RELIABILITY.md).
test-faults: $(STAMP)
	rm -f .faults-results.jsonl
	SCORECAST_FAULTS=1 $(BIN)/python -m pytest tests/faults -s -q $(PYTEST_ARGS)

# The production stack of docker-compose.yml, built and run for real under
# podman (as root; installs podman, mmdebstrap, ... when missing) and driven
# from outside; torn down whatever happens. docs/DEPLOYMENT.md.
test-stack: $(STAMP)
	bash scripts/test-stack.sh

# Node.js, Chromium, haproxy, promtool for the suite (installed as root).
system-deps:
	bash scripts/system-deps.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
