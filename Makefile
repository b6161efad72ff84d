# Two commands on a fresh machine: `make study` and `make test`. Both build .venv when it is
# missing or older than pyproject.toml, with $(PYTHON): `PYTHON=python3.12 make test` picks one.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: study test test-fast bench data lab clean-reports check-python
.DEFAULT_GOAL := $(STAMP)

# Stops make before anything is created when $(PYTHON) (or the Python that built .venv) is outside
# requires-python in pyproject.toml: one line naming the version found and the supported ones.
# Run when a target is built, not when the Makefile is read.
check-python:
	@$(call stop_if,$(shell sh tools/check-python.sh '$(PYTHON)'))
stop_if = $(if $1,$(error $1),:)

$(STAMP): pyproject.toml | check-python
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# The study and the bench write reports/, then refresh the generated tables of README.md and docs/.
study: $(STAMP)
	$(PY) -m selective_update study --out reports
	$(PY) -m selective_update docs --reports reports

# ruff first (fail fast), then pytest. pytest exits 5 when it collects nothing: that is a failure
# here, not a pass. test-fast skips the notebook, browser and registry tests.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -m "not slow and not browser and not registry"

bench: $(STAMP)
	$(PY) -m selective_update bench --out reports
	$(PY) -m selective_update docs --reports reports

data: $(STAMP)
	$(PY) -m selective_update data --out data

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean-reports:
	rm -rf reports
