# Two commands on a fresh machine:  `make run` (the daemon)  and  `make test` (the test suite).
# Both create .venv on first use and reinstall when pyproject.toml changes. They install what pip
# resolves today, as a user's machine does; `make test CONSTRAINTS=constraints.txt` installs the
# last known-good set instead (into .venv-pinned), and `make constraints` refreshes that file.
PYTHON      ?= python3
CONFIG      ?= config.yaml
CONSTRAINTS ?=
VENV        ?= $(if $(CONSTRAINTS),.venv-pinned,.venv)
BIN          = $(VENV)/bin
PYTEST_ARGS ?=
# Two pytest workers, one test file each at a time: most end-to-end tests wait on a daemon
# process, so two nearly halve the suite's time on two cores (measured before the Ray tests:
# 136 s against 259 s).
TEST_WORKERS ?= 2

.PHONY: run test lint bench constraints clean

$(BIN)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,ray]' $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	touch $@

$(CONFIG):
	cp config.example.yaml $(CONFIG)
	@echo "created $(CONFIG) from config.example.yaml: edit it, then run 'make run' again if needed"

# The first run fetches the ImageNet weights the config needs (once; offline it stops with one line).
run: $(BIN)/.installed $(CONFIG)
	$(BIN)/nst-batch fetch-weights --config $(CONFIG) --if-missing
	$(BIN)/nst-batch serve --config $(CONFIG)

# The style (ruff) and the layers (import-linter: cli > daemon > results > settings > engine > util,
# no import cycles) are checked before any test runs: a change that breaks them is red at once.
test: $(BIN)/.installed lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check nst_batch tests benchmarks
	$(BIN)/lint-imports

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/engine_overhead.py

# A fresh venv with what pip resolves today; if the suite passes on it, its versions become
# constraints.txt, the last known-good set.
constraints:
	rm -rf .venv-resolve
	$(PYTHON) -m venv .venv-resolve
	.venv-resolve/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev,ray]'
	.venv-resolve/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile
	{ echo "# The last known-good set: 'make test' passed with these on $$(date -u +%F)," \
	       "Python $$(.venv-resolve/bin/python -c 'import platform; print(platform.python_version(), platform.machine())')."; \
	  echo "# Reproduce a failure with: make test CONSTRAINTS=constraints.txt   Refresh with: make constraints"; \
	  .venv-resolve/bin/python -m pip freeze --exclude-editable --disable-pip-version-check; } > constraints.txt
	rm -rf .venv-resolve

clean:
	rm -rf $(VENV) .venv .venv-pinned .venv-resolve .pytest_cache
