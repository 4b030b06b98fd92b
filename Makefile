# make demo: a real training session on localhost with a tiny model.   make test: the whole suite.
# make check: lint + the tests that boot no test host and take seconds each (the inner loop).
# make test runs the suite in tiers (fast, slow, hosts: tests/tiers.sh) and prints each tier's time.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TINY := examples/models/tiny-chat
# The CPU wheel of torch 2.13.0 on the dev/CI machines; GPU hosts install a CUDA build (see README).
TORCH ?= torch==2.13.0

.PHONY: venv demo test check lint deps clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[train,dev]' "$(TORCH)"
	touch $@

venv: $(BIN)/.installed

$(TINY): examples/make_tiny_model.py examples/data/demo.jsonl | venv
	rm -rf $@
	$(BIN)/python examples/make_tiny_model.py $@

demo: venv $(TINY)
	$(BIN)/runner train examples/demo.yaml

# System packages the tests need (systemd-nspawn, mmdebstrap, a C compiler): apt, idempotent.
deps:
	[ ! -f tests/hosts/deps.sh ] || bash tests/hosts/deps.sh

lint: venv
	$(BIN)/ruff check .
	cd $(CURDIR) && $(BIN)/ansible-lint --offline -q

test: venv deps $(TINY) lint
	bash tests/tiers.sh $(BIN)/pytest

check: venv $(TINY) lint
	$(BIN)/pytest -q -m "not hosts and not slow and not gpu"

clean:
	rm -rf $(VENV) $(TINY) runs
