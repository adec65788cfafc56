# The one image of the production path: web (the default command), worker, beat and the
# one-shot migrate job all run it with a different command (docker/README.md).
# Checked by hadolint in `make lint` and cross-checked against the code by
# tests/deploy/test_dockerfile.py.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- builder: compilers, and the production requirements installed into a venv ----------------
FROM ${PYTHON_IMAGE} AS builder

# Every pinned requirement ships a wheel for CPython 3.11 on glibc; the compilers are here
# for a platform where one does not, and never reach the final stage. Debian's package
# versions are not pinned: the base image tag pins the release, its security updates apply.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/venv
COPY requirements/base.txt requirements/prod.txt /tmp/requirements/
RUN /opt/venv/bin/pip install -r /tmp/requirements/prod.txt

# --- final: the slim base, the venv, the code; no compilers, no package lists -----------------
FROM ${PYTHON_IMAGE} AS final

# A fixed UID/GID, so volume ownership and Kubernetes' runAsUser/fsGroup can name it.
ARG APP_UID=10001
ARG APP_GID=10001
RUN groupadd --system --gid "${APP_GID}" app \
    && useradd --system --uid "${APP_UID}" --gid app --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin app \
    && install -d -o app -g app -m 0750 /var/lib/enterprise-ai

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=enterprise_ai.settings \
    LOCAL_DATA_DIR=/var/lib/enterprise-ai \
    STATIC_ROOT=/app/staticfiles \
    WORKER_CONCURRENCY=200

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# The code belongs to root and is read-only for the app user; .dockerignore keeps the venv,
# .local, tests, caches and benchmark results out.
COPY . /app

# Static files gathered at build time into STATIC_ROOT (WhiteNoise serves them), under
# throwaway values that put the settings on the production path (STATIC_ROOT exists only
# there) without any real service or secret: nothing connects to the database during
# collectstatic, and with SECRET_KEY, AUDIT_HMAC_KEY and ENCRYPTION_MASTER_KEY given nothing is
# generated. The
# values live only in this RUN, not in the image's environment. The last test fails the build
# should the settings ever write into LOCAL_DATA_DIR here (a secret baked into the image).
RUN DATABASE_URL=postgres://collectstatic@127.0.0.1:9/collectstatic \
    SECRET_KEY=build-only-collectstatic-not-a-secret-0123456789abcdef \
    AUDIT_HMAC_KEY=build-only-collectstatic-not-a-secret-0123456789abcdef \
    ENCRYPTION_MASTER_KEY=build-only-collectstatic-not-a-secret-0123a \
    ALLOWED_HOSTS=collectstatic.invalid \
    LOCAL_DATA_DIR=/tmp/collectstatic-local \
    python manage.py collectstatic --noinput --verbosity 0 \
    && test ! -e /tmp/collectstatic-local \
    && python -m compileall -q /app

USER ${APP_UID}:${APP_GID}

EXPOSE 8000

# Liveness of the web process (/healthz answers before host checks and HTTPS redirects:
# observability/middleware.py). Worker and beat containers turn it off (docker/README.md).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["python", "manage.py", "serve", "--host", "0.0.0.0", "--port", "8000"]
