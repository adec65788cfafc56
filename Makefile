# The front door. `make run` serves the embedded default; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
HOST ?= 127.0.0.1
PORT ?= 8000

# The production-path tests run against these local services (see docs/testing.md).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/enterprise_ai
TEST_REDIS_URL ?= redis://127.0.0.1:6379/9
PRODUCTION_TEST_ENV := DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) \
	SECRET_KEY=test-only-secret-key-not-for-production-use-0123456789 \
	AUDIT_HMAC_KEY=test-only-audit-checkpoint-key-not-for-production-0123 \
	ENCRYPTION_MASTER_KEY=test-only-encryption-key-not-for-production \
	ALLOWED_HOSTS=localhost,127.0.0.1 REDIS_KEY_PREFIX=eai-test \
	DATABASE_ALLOW_PRIVILEGED_ROLE=true

# Tests never read the developer's service configuration.
UNSET_SERVICES := env -u DATABASE_URL -u REDIS_URL -u CELERY_BROKER_URL -u SECRET_KEY \
	-u AUDIT_HMAC_KEY -u AUDIT_ANCHOR_S3_BUCKET -u ENCRYPTION_MASTER_KEY -u ENCRYPTION_KMS_KEY_ID

.PHONY: venv run worker beat test test-unit test-production bench lint format clean

$(STAMP): requirements/base.txt requirements/prod.txt requirements/dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements/dev.txt
	@touch $(STAMP)

venv: $(STAMP)

## Serve the embedded default on http://$(HOST):$(PORT)/ (reads .env if present). The
## server prints the address, and a first-run administrator password, last (once it listens).
run: venv
	@set -a; [ ! -f .env ] || . ./.env; set +a; \
	$(BIN)/python manage.py migrate --noinput && \
	$(BIN)/python manage.py ensure_admin --show-at-serve && \
	exec $(BIN)/python manage.py serve --host $(HOST) --port $(PORT)

## A Celery worker for the production path (needs REDIS_URL / CELERY_BROKER_URL): one process,
## a pool of threads (replies wait on the network; WORKER_CONCURRENCY replies at once).
WORKER_CONCURRENCY ?= 200
worker: venv
	@set -a; [ ! -f .env ] || . ./.env; set +a; \
	exec $(BIN)/celery -A enterprise_ai worker -Q llm,default --pool threads \
		--concurrency $${WORKER_CONCURRENCY:-$(WORKER_CONCURRENCY)} --loglevel=INFO

## Celery beat for the production path: signs audit checkpoints on schedule.
beat: venv
	@set -a; [ ! -f .env ] || . ./.env; set +a; mkdir -p .local; \
	exec $(BIN)/celery -A enterprise_ai beat --loglevel=INFO --schedule .local/celerybeat-schedule

## Every test: the embedded suite, then the production path (Postgres, Redis, Celery).
test: test-unit test-production

test-unit: venv
	$(UNSET_SERVICES) $(BIN)/python -m pytest -m "not production"

test-production: venv
	$(UNSET_SERVICES) $(PRODUCTION_TEST_ENV) $(BIN)/python -m pytest -m production

## Benchmarks on the local PostgreSQL, results in bench/results/: the audit trail (BENCH_AUDIT_EVENTS=20000: quick), then budgets (reserve/settle throughput, latency per turn), then guardrail screening (no database), then encryption at rest per reply (no database), then the usage dashboard over 1,000,000 ledger rows (BENCH_USAGE_REPLIES), then chat side by side: the upstream direct vs the production path and the embedded default over real sockets (python -m bench.chat_bench --quick: a few minutes), then the API side by side: the upstream direct vs the REST and OpenAI-compatible APIs at 1/10/50 streams (python -m bench.api_bench --quick).
bench: venv
	$(UNSET_SERVICES) $(BIN)/python -m bench.audit_bench
	$(UNSET_SERVICES) $(BIN)/python -m bench.costs_bench
	$(UNSET_SERVICES) $(BIN)/python -m bench.guardrails_bench
	$(UNSET_SERVICES) $(BIN)/python -m bench.encryption_bench
	$(UNSET_SERVICES) $(BIN)/python -m bench.usage_bench
	$(UNSET_SERVICES) $(BIN)/python -m bench.chat_bench
	$(UNSET_SERVICES) $(BIN)/python -m bench.api_bench

lint: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy .
	$(BIN)/hadolint Dockerfile
	$(BIN)/python deploy/k8s/check.py
	@if docker compose version >/dev/null 2>&1; then \
		docker compose -f docker/compose.yaml config -q; \
	else \
		echo "docker compose not installed: the compose file is checked by tests/deploy/test_compose.py"; \
	fi
	$(UNSET_SERVICES) $(BIN)/python -m pytest -q -p no:cacheprovider tests/deploy/test_compose.py tests/deploy/test_k8s.py -m "not e2e"
	$(UNSET_SERVICES) $(BIN)/python manage.py makemigrations --check --dry-run
	$(UNSET_SERVICES) $(PRODUCTION_TEST_ENV) $(BIN)/python manage.py check --deploy --fail-level WARNING
	@if command -v promtool >/dev/null; then \
		promtool check rules deploy/observability/prometheus-alerts.yaml && \
		promtool check config --syntax-only deploy/observability/prometheus.yml && \
		promtool test rules deploy/observability/prometheus-alerts.test.yaml; \
	else \
		echo "promtool not installed: alert rules checked by observability/tests/test_ops_files.py only"; \
	fi

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .local staticfiles .pytest_cache .ruff_cache .mypy_cache test-artifacts
