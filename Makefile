# Both user-facing targets set up .venv/ first (idempotent: seconds when nothing changed).
PY := .venv/bin/python

.PHONY: setup demo test check
setup:
	bash scripts/setup.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest -q tests

check: setup
	$(PY) -m mmef.check
