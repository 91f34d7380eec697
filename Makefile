# Two commands on a fresh machine:  `make run` (the daemon)  and  `make test` (the test suite).
# Both create .venv on first use and reinstall when pyproject.toml changes.
VENV   ?= .venv
PYTHON ?= python3
CONFIG ?= config.yaml
BIN     = $(VENV)/bin

.PHONY: run test bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

$(CONFIG):
	cp config.example.yaml $(CONFIG)
	@echo "created $(CONFIG) from config.example.yaml: edit it, then run 'make run' again if needed"

run: $(BIN)/.installed $(CONFIG)
	$(BIN)/nst-batch serve --config $(CONFIG)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/engine_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache
