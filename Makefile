# clbench: `make bench` runs the default suite and writes reports/quick/;
# `make test` runs the test suite. Both install into .venv first if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.clbench-installed
# Every install pins every distribution to the committed lock (all extras included), so two
# fresh installs a month apart are the same program. `make lock` regenerates it on purpose.
LOCK   := requirements/lock.txt
EXTRAS := dev,dist,text,track
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check
# Two worker processes with one torch thread each: the setting the 10-minute
# figure in benchmarks/RESULTS.md was measured with, and robust when something
# else holds a core (two threads in one process then thrash).
# `make bench JOBS=1` runs cells one at a time.
JOBS   ?= 2

.PHONY: install lock readme study study-tune study-report study-smoke bench bench-cifar tune-cifar bench-hope tune-hope bench-text tune-gap bench-gap test report bench-full reproduce lint clean-runs tune

install: $(STAMP)

# Re-installs only when pyproject.toml or the lock changes; the package itself is editable.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -c $(LOCK) -e '.[$(EXTRAS)]'
	touch $(STAMP)

# Resolve the newest versions pyproject.toml allows in a throw-away venv and freeze them.
# Then: make install, make test, make bench, and `clbench report --compare` (README, "Upgrading").
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	{ echo "# clbench's dependency lock: every distribution of \`pip install -e '.[$(EXTRAS)]'\`, pinned."; \
	  echo "# Made by \`make lock\` on $$(date -u +%F) with Python $$(.lock-venv/bin/python -c 'import platform; print(platform.python_version())') on $$(uname -m) Linux."; \
	  echo "# \`make install\` installs with -c this file; do not edit it by hand."; \
	  .lock-venv/bin/pip freeze --exclude-editable --disable-pip-version-check | LC_ALL=C sort -f; } > $(LOCK)
	rm -rf .lock-venv
	@echo "wrote $(LOCK): $$(grep -c '==' $(LOCK)) pinned distributions"

bench: install
	$(BIN)/clbench bench suites/quick.toml --tuned suites/quick.tuned.toml --out runs/quick --jobs $(JOBS) --report reports/quick

# Regenerate the committed tuned values of the default suite (docs/tuning.md): the first_k
# protocol (Chaudhry et al. 2019) with k = 3 on the validation split, 2 tuning seeds (100, 101;
# the suite evaluates on 0-4), 10 trials for every row: about 16 minutes on 2 cores.
# `make bench` applies the committed result, so it does not tune.
tune: install
	$(BIN)/clbench tune suites/quick.toml --protocol first_k --k 3 --seeds 100,101 --trials 10 \
	  --out runs/quick-tune --output suites/quick.tuned.toml --jobs $(JOBS) --report reports/quick/tuning

# pytest through its console script, not `python -m pytest` (which puts the cwd, the repo root,
# first on sys.path); importlib import mode (pyproject) keeps it off as well.
test: install
	# One intra-op thread: the test models are tiny, and two threads on a busy
	# 2-core machine thrash (a cell can take 10x longer).
	OMP_NUM_THREADS=1 $(BIN)/pytest -q
# README tables between `<!-- BEGIN generated: ... -->` markers, rebuilt from the committed
# reports (clbench/report/readme.py); tests/test_readme_numbers.py fails when they differ.
readme: install
	$(BIN)/python -m clbench.report.readme README.md
	$(BIN)/python -m clbench.report.readme reports/cifar/FINDINGS.md
	$(BIN)/python -m clbench.report.readme reports/hope/FINDINGS.md
	$(BIN)/python -m clbench.report.readme reports/stability_gap/FINDINGS.md
	$(BIN)/python -m clbench.report.readme reports/study/FINDINGS.md

report: install
	$(BIN)/clbench report runs/quick --out reports/quick

# Text streams (clinc150, banking77 on the MiniLM encoder; brown_lm from scratch); writes reports/text/.
# Split CIFAR-100 on a CPU: first the one-time feature cache of the pretrained track (both
# kinds, all 60k images; a warm cache takes seconds), timed apart from the suites and kept in
# runs/cifar/feature_cache.jsonl; then the pretrained track with its committed tuned values
# (suites/cifar_quick.toml -> reports/cifar/) and the from-scratch quick profile
# (suites/cifar_scratch_quick.toml -> reports/cifar/scratch/).
bench-cifar: install
	mkdir -p runs/cifar
	$(BIN)/python -m clbench.vision.features --kind both --workers $(JOBS) | tee runs/cifar/feature_cache.jsonl
	$(BIN)/clbench bench suites/cifar_quick.toml --tuned suites/cifar_quick.tuned.toml --out runs/cifar --jobs $(JOBS) --report reports/cifar
	$(BIN)/python -m clbench.report.controls reports/cifar hope:transformer_matched cms:naive ranpac:ncm
	$(BIN)/clbench bench suites/cifar_scratch_quick.toml --out runs/cifar_scratch --jobs $(JOBS) --report reports/cifar/scratch

# Regenerate suites/cifar_quick.tuned.toml as `make tune` does for the default suite.
tune-cifar: install
	$(BIN)/python -m clbench.vision.features --kind both --workers $(JOBS)
	$(BIN)/clbench tune suites/cifar_quick.toml --protocol first_k --k 3 --seeds 100,101 --trials 8 \
	  --out runs/cifar-tune --output suites/cifar_quick.tuned.toml --jobs $(JOBS) --report reports/cifar/tuning

# HOPE at equal plasticity (suites/hope.toml, mid HOPE vs its matched Transformer and the
# baselines, 5 seeds) and its Table 6 ablations (suites/hope_ablations.toml, 3 seeds), with
# each row's planned comparison with its control in CONTROLS.md. About 1 hour on 2 cores.
bench-hope: install
	OMP_NUM_THREADS=1 $(BIN)/clbench bench suites/hope.toml --tuned suites/hope.tuned.toml --out runs/hope --jobs $(JOBS) --report reports/hope
	$(BIN)/python -m clbench.report.controls reports/hope hope:transformer_matched hope:hope_attention hope:naive hope:ewc hope:replay
	OMP_NUM_THREADS=1 $(BIN)/clbench bench suites/hope_ablations.toml --out runs/hope_ablations --jobs $(JOBS) --report reports/hope/ablations
	$(BIN)/python -m clbench.report.controls reports/hope/ablations $(HOPE_ABLATION_PAIRS)

HOPE_ABLATION_PAIRS = hope_no_dgd:hope hope_no_momentum:hope hope_no_retention:hope hope_no_cms:hope \
	hope_static_k:hope hope_static_v:hope hope_adaptive_q:hope hope_raw_v:hope hope_plain_w1:hope hope_inner_momentum:hope

# Regenerate suites/hope.tuned.toml: every row of suites/hope.toml gets the same 10 trials.
tune-hope: install
	OMP_NUM_THREADS=1 $(BIN)/clbench tune suites/hope.toml --protocol first_k --k 3 --seeds 100,101 --trials 10 \
	  --out runs/hope-tune --output suites/hope.tuned.toml --jobs $(JOBS) --report reports/hope/tuning

# The stability-gap suite (docs/stability_gap.md): ~10 min tuning + ~15 min bench on 2 cores.
tune-gap: install
	OMP_NUM_THREADS=1 $(BIN)/clbench tune suites/stability_gap.toml --protocol first_k --k 3 --seeds 100,101 --trials 10 \
	  --out runs/stability_gap-tune --output suites/stability_gap.tuned.toml --jobs $(JOBS) --report reports/stability_gap/tuning

bench-gap: install
	OMP_NUM_THREADS=1 $(BIN)/clbench bench suites/stability_gap.toml --tuned suites/stability_gap.tuned.toml \
	  --out runs/stability_gap --jobs $(JOBS) --report reports/stability_gap
	$(BIN)/python -m clbench.report.controls reports/stability_gap cms:cms_p1 cms:naive cms:ewc cms:replay

# The study (docs/study.md): do HOPE and CMS forget less than EWC and replay at equal plasticity?
# One suite per part (suites/study/<part>.toml), each sized to about 90 minutes on 2 cores:
#   make study-tune PART=mnist   # first_k, k = 3, tuning seeds 100-101, 10 trials for every arm
#   make study PART=mnist        # (tunes first if the part has no tuned file) the part's cells ->
#                                # runs/study/mnist; finished cells are then
#                                # copied to reports/study/cells (commit them) and the report rebuilt
# Without PART every part runs in turn (hours); an interrupted part resumes where it stopped.
STUDY_PARTS ?= mnist cifar clinc split_mnist_hope split_mnist_hope_replay pmnist_hope pmnist_hope_replay cifar_hope cifar_hope_replay
PART ?= $(STUDY_PARTS)

STUDY_TUNE = OMP_NUM_THREADS=1 $(BIN)/clbench tune suites/study/$$p.toml --protocol first_k --k 3 --seeds 100,101 \
	--trials 10 --out runs/study-tune/$$p --output suites/study/$$p.tuned.toml --jobs $(JOBS) --report reports/study/tuning/$$p

study-tune: install
	set -e; for p in $(PART); do $(STUDY_TUNE); done

# A part without a committed tuned file is tuned first. Exit status 1 of `clbench bench` means
# some cells failed: they are results too (stored with their reasons) and are copied; 2 (bad
# input) stops here.
study: install
	set -e; for p in $(PART); do \
	  test -f suites/study/$$p.tuned.toml || $(STUDY_TUNE); \
	  OMP_NUM_THREADS=1 $(BIN)/clbench bench suites/study/$$p.toml --tuned suites/study/$$p.tuned.toml \
	    --out runs/study/$$p --jobs $(JOBS) -q || test $$? -eq 1; \
	  $(BIN)/python -m clbench.report.study.collect runs/study/$$p reports/study; \
	done
	$(MAKE) study-report

study-report: install
	$(BIN)/python -m clbench.report.study reports/study
	$(BIN)/python -m clbench.report.readme reports/study/FINDINGS.md

# Every arm of the study on smoke streams, through the same report (CI runs it in the tests).
study-smoke: install
	set -e; for p in mnist clinc; do \
	  OMP_NUM_THREADS=1 $(BIN)/clbench bench suites/study_smoke/$$p.toml --out runs/study_smoke/$$p --jobs $(JOBS) -q; \
	  $(BIN)/python -m clbench.report.study.collect runs/study_smoke/$$p runs/study_smoke/report; \
	done
	$(BIN)/python -m clbench.report.study runs/study_smoke/report --parts suites/study_smoke

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
