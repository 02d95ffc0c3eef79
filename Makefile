# tlq: `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tlq-installed

.PHONY: venv demo test test-fast services browser lint bench mutation clean

venv: $(STAMP)

# pip takes the torch build that lies on this machine's disk; see the README for other machines.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# torchattacks (the PGD reference in tests and bench/) pins an old requests; its code needs none of it.
	$(PY) -m pip install -q --no-deps torchattacks==3.5.1
	touch $(STAMP)

services:
	bash scripts/services.sh

# Headless Chromium (Debian's package) for the dashboard's browser tests, installed when missing.
browser:
	bash scripts/browser.sh

demo: $(STAMP)
	$(PY) examples/demo.py

# Two test processes share the 2 cores (integration tests mostly wait on workers and timers); tests that
# disturb shared services run alone afterwards. One math thread per process (OMP_NUM_THREADS=1, inherited by
# the workers the tests start): two processes of two spinning threads each on two cores made the model tests
# ten times slower. The 15 slowest tests are listed at the end.
test: $(STAMP) services browser
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -ra -n 2 --dist loadfile -m "not serial" --durations=15
	$(PY) -m pytest -q -ra -m serial

# No services (Redis, PostgreSQL) needed: tests that use them are marked `services` by tests/conftest.py.
test-fast: $(STAMP)
	TLQ_TESTS_WITHOUT_SERVICES=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -ra -n 2 -m "not integration and not services"

lint: $(STAMP)
	$(VENV)/bin/ruff check tlq tests examples bench mutation
	$(VENV)/bin/ruff format --check tlq tests examples bench mutation
	$(VENV)/bin/lint-imports

bench: $(STAMP) services
	$(PY) bench/run.py

# Mutation testing of the core with mutmut (mutation/run.py; survivors that need no test: mutation/equivalent.md).
# Niced: it keeps both cores busy for about half an hour. Its last line is the score.
mutation: $(STAMP) services
	nice -n 10 $(PY) mutation/run.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info mutants
