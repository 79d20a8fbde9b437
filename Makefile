# clbench: `make bench` runs the default suite and writes reports/quick/;
# `make test` runs the test suite. Both install into .venv first if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.clbench-installed
# Two worker processes with one torch thread each: the setting the 10-minute
# figure in benchmarks/RESULTS.md was measured with, and robust when something
# else holds a core (two threads in one process then thrash).
# `make bench JOBS=1` runs cells one at a time.
JOBS   ?= 2

.PHONY: install bench bench-text test report bench-full reproduce lint clean-runs

install: $(STAMP)

# Re-installs only when pyproject.toml changes; the package itself is editable.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,text]'
	touch $(STAMP)

bench: install
	$(BIN)/clbench bench suites/quick.toml --out runs/quick --jobs $(JOBS) --report reports/quick

test: install
	# One intra-op thread: the test models are tiny, and two threads on a busy
	# 2-core machine thrash (a cell can take 10x longer).
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

report: install
	$(BIN)/clbench report runs/quick --out reports/quick

# Text streams (clinc150, banking77 on the MiniLM encoder; brown_lm from scratch); writes reports/text/.
bench-text: install
	OMP_NUM_THREADS=1 $(BIN)/clbench bench suites/text_quick.toml --out runs/text_quick --jobs $(JOBS) --report reports/text

bench-full: install
	$(BIN)/clbench bench suites/full.toml --out runs/full --jobs $(JOBS) --report reports/full

# The CPU anchors of continual-learning-baselines (suites/anchors/), one-sided bands;
# writes reports/reproduce/. Add --include-gpu on a GPU machine.
reproduce: install
	OMP_NUM_THREADS=1 $(BIN)/clbench reproduce --jobs 2

lint: install
	$(BIN)/ruff check .

clean-runs:
	rm -rf runs/
