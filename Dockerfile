# syntax=docker/dockerfile:1
# nubo API image. Two stages: the builder installs nubo and its dependencies into a virtualenv; the runtime
# stage copies only that virtualenv plus the schema files (sql/, mongo/) and runs as the non-root user `nubo`.
# The same image runs the API (`nubo serve`, the default command) and the one-shot `nubo db init`.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# The venv path must be the same in both stages: its scripts carry absolute shebangs.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies change less often than code, but pip needs the package to resolve them: copy only what the
# build reads (pyproject.toml names README.md as the long description).
COPY pyproject.toml README.md ./
COPY nubo ./nubo
RUN pip install --upgrade pip && pip install . && nubo --help >/dev/null

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUBO_SQL_DIR=/app/sql \
    NUBO_MONGO_DIR=/app/mongo \
    NUBO_HOST=0.0.0.0 \
    PORT=8080
RUN groupadd --system --gid 10001 nubo \
    && useradd --system --uid 10001 --gid nubo --home-dir /app --shell /usr/sbin/nologin nubo
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# `nubo db init` reads the schema from NUBO_SQL_DIR / NUBO_MONGO_DIR (the package is installed, not the repo).
COPY --chown=root:root sql/ /app/sql/
COPY --chown=root:root mongo/ /app/mongo/
USER nubo
EXPOSE 8080
# Liveness only (/healthz): the slim image has no curl, so Python does the request; a non-2xx raises -> exit 1.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]
CMD ["nubo", "serve"]
