# Two commands do all the set-up on a fresh machine (Python 3.11): `make demo` and `make test`.
# Each creates .venv and installs what it needs the first time (and again whenever pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Installed first and pinned: with this torch in place nothing else pulls the multi-GB CUDA packages.
TORCH  ?= torch==2.13.0

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python jobs/demo.py

# --durations: every CI log names the slowest tests, what to trim when CI nears its 25 minutes
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=20

clean:
	rm -rf $(VENV) demo_output .pytest_cache
