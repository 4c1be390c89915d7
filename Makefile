# Two entry points for a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench faults clean

$(BIN)/recal: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/recal
	$(BIN)/recal demo

test: $(BIN)/recal
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

bench: $(BIN)/recal
	status=0; for f in bench/bench_*.py; do $(BIN)/python $$f || status=1; done; exit $$status

# The fault-injection suite at full length (Redis down 30 s, broker frozen 15 s) with its summary table;
# add --soak 600 for the 10-minute soak.
faults: $(BIN)/recal
	$(BIN)/python bench/fault_suite.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
