# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed

.PHONY: demo test lint docs bench clean system-tools web-assets

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# `make demo` installs veloxserve and its runtime dependencies only; `make test` adds the test tools,
# Spark, the frameworks the adapters are tested with and the docs site's builder.
$(DEMO_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,spark,docs]'
	touch $(STAMP) $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/veloxserve demo

# Two workers (CI has 2 cores: about 9 instead of 15 minutes), each taking whole files so that a module's
# shared fixtures (trained versions, started servers) are built once; tests pick free ports and key prefixes.
test: $(STAMP) system-tools
	$(PY) -m pytest -n 2 --dist loadfile

# The habits CI checks (.ci/run runs it before the tests): lint, formatting, zero type errors.
lint: $(STAMP)
	$(VENV)/bin/ruff check veloxserve tests bench examples docs/hooks
	$(VENV)/bin/ruff format --check veloxserve tests bench examples docs/hooks
	$(PY) -m mypy

# What pip cannot install: said up front, not discovered as a skipped (or, under CI=true, failed) test.
# .ci/run installs them on a fresh CI machine.
system-tools:
	@missing=""; for t in nginx wrk redis-server; do \
	  command -v $$t >/dev/null 2>&1 || [ -x /usr/sbin/$$t ] || missing="$$missing $$t"; done; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  echo "make test: missing system tools:$$missing. On Debian: sudo apt-get install$$missing" \
	       "(nginx: tests/test_deploy.py; wrk: bench smoke runs; redis-server when REDIS_URL is unset;" \
	       "chromium, chromium-driver: the dashboard's browser tests, tests/api/test_dashboard.py)." \
	       "Tests that need them are skipped outside CI and fail under CI=true."; fi

# The site (mkdocs.yml, docs/) into site/; tests/test_docs.py builds it with --strict in every `make test`.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/bench_core.py

# The dashboard's and /docs' JS libraries, from npm (versions in the script; docs/dashboard.md).
web-assets:
	scripts/vendor-web-assets.sh

clean:
	rm -rf $(VENV) veloxserve-home .pytest_cache site dist build test-artefacts
