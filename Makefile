# Two commands on a fresh machine: `make study` and `make test`. Both build .venv when it is
# missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: study test bench data lab clean-reports

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

study: $(STAMP)
	$(PY) -m selective_update study --out reports

# pytest exits 5 when it collects nothing: that is a failure here, not a pass.
test: $(STAMP)
	$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) -m selective_update bench --out reports

data: $(STAMP)
	$(PY) -m selective_update data --out data

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean-reports:
	rm -rf reports
