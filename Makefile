# The two commands in README: `make train` and `make test` do all the set-up themselves.
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= dev

.PHONY: install train test test-all lint format bench quality test-generated clean

# Re-install only when the dependencies change.
$(VENV)/.installed-$(EXTRAS): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

train: install
	$(PY) train.py $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) tools/check_portability.py

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Spread over the cores (pytest-xdist; TEST_JOBS=0: one process). A file's tests stay in one worker, so
# the runs its fixtures share are made once. `make test` leaves out the tests marked `slow` (the whole
# runs past its 10-minute budget on 2 cores: a matrix's cases after its first, torchrun, FSDP, copier,
# the ssh server); `make test-all` runs everything, as CI does (docs/testing.md).
TEST_JOBS ?= auto
TEST_MARKS ?= not slow
test: install lint
	$(PY) -m pytest -n $(TEST_JOBS) --dist loadfile -m "$(TEST_MARKS)" $(PYTEST_ARGS)

test-all:
	$(MAKE) test TEST_MARKS=

# The template's steps against a hand-written loop (paired, interleaved blocks with 95% intervals), whole runs
# against tools/handwritten_train.py, startup, graph logging; writes docs/benchmarks.md. ARGS=--quick: a minute.
bench: install
	$(PY) tools/bench.py $(ARGS)

# The quality targets that take minutes (segmentation mIoU, language-model bits per character): trains each
# heavy experiment and writes docs/quality.md; exits 1 if one is missed.
quality: install
	$(PY) tools/quality.py $(ARGS)

# Projects generated from this template by copier (copier.yml), with the sets of answers of
# tests/generated.py (everything, the minimum, one in between; PROJECTS="minimum" for one), each through
# its own whole `make test` on this venv (PROJECTS="--differing minimum": only the tests that differ from the
# template's, as CI runs them). PROJECTS="--single": a project of each task, model and dataset alone
# (PROJECTS="single-model-unet" for one). `make test` itself checks them more quickly.
test-generated: install
	$(PY) -m tests.generated $(PROJECTS)

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
