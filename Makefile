# `make run` starts the whole service with embedded defaults; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
export PATH := $(CURDIR)/$(BIN):$(PATH)
export no_proxy := 127.0.0.1,localhost

# Where `make run` serves (set them in the environment to move it): the Procfile, the shop's
# URLs (pay links' return and notification URLs, the sandbox's gateway, config/settings.py)
# and the banner below all follow these two.
WEB_BIND ?= 127.0.0.1:8000
SANDBOX_PORT ?= 8090

# Key mode (the default) or, with ALIPAY_MODE=cert, Alipay's certificate mode: the sandbox
# issues the shop's certificate and signs with a certificate of its own (README: Certificate
# mode).
ALIPAY_MODE ?= key
ifeq ($(ALIPAY_MODE),cert)
export ALIPAY_APP_CERT_PATH := $(CURDIR)/keys/appCertPublicKey.crt
export ALIPAY_CERT_PATH := $(CURDIR)/keys/alipayCertPublicKey_RSA2.crt
export ALIPAY_ROOT_CERT_PATH := $(CURDIR)/keys/alipayRootCert.crt
export ALIPAY_SANDBOX_CERT_DIR := $(CURDIR)/keys
KEYS_FLAGS := --cert
endif

# The tests use the real services: PostgreSQL and Redis (see README.md).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/14

.PHONY: install install-test prepare run test test-fast lint bench clean

# `make run` needs the runtime only; the test tools (pytest, Playwright, mypy, ruff, stubs,
# schemathesis) come with `make test`.
install: $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet .
	touch $@

install-test: $(TEST_STAMP)

$(TEST_STAMP): $(RUN_STAMP)
	$(BIN)/pip install --quiet '.[test]'
	touch $@

prepare: install
	mkdir -p var
	$(BIN)/python manage.py alipay_keys --sandbox $(KEYS_FLAGS)
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python manage.py seed_demo

run: prepare
	@echo
	@echo "  Storefront : http://$(WEB_BIND)/"
	@echo "  Admin      : http://$(WEB_BIND)/admin/   (operator admin / admin-pass)"
	@echo "  API user   : demo / demo-pass   (POST /authorizations/ for a token)"
	@echo "  Sandbox    : http://127.0.0.1:$(SANDBOX_PORT)/   (local Alipay gateway, control API on)"
	@echo "  Ctrl-C stops everything."
	@echo
	@# Ctrl-C ends honcho with 130: the normal way to stop, not an error.
	@$(BIN)/honcho start -f Procfile || [ $$? -eq 130 ]

# Two pytest processes (pytest-xdist), a test module at a time each: most of the slow tier
# waits on the processes it starts. Each has its own test database and Redis databases
# (config/settings_test.py, tests/support.py), laid out for two at most; TEST_PROCESSES=0
# runs the suite in one.
TEST_PROCESSES ?= 2

test: install-test lint
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_REDIS_URL) \
		$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

# The fast tier only: services on real PostgreSQL, no processes started (seconds, not minutes).
test-fast: install-test
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_REDIS_URL) \
		$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/mypy config infra shop payment backoffice workers alipay_sandbox bench
	$(BIN)/lint-imports
	$(BIN)/python manage.py spectacular --validate --fail-on-warn --skip-checks --file /dev/null

bench: install-test
	@echo "see bench/README.md"

clean:
	rm -rf var
