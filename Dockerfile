# syntax=docker/dockerfile:1
# SIMVEB image: `simveb serve` (the API and every actor, or some of them with `serve --actors`).
#   docker build -t simveb .
#   docker run --env-file deploy/simveb.env -p 8000:8000 -v simveb-data:/data simveb
# Nothing secret is baked in: keys, passwords and provider credentials come from the environment at
# run time (deploy/simveb.env.example lists them), and production refuses to start without them.
# tests/test_deploy.py replays this recipe without Docker (same wheel, files, environment, entry point, user).

# 3.11: the Python the test suite runs on (requires-python >= 3.11).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the project and every dependency as wheels (no compiler needed in the final image) ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY simveb ./simveb
RUN pip wheel --wheel-dir /wheels .

# --- runtime --------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are mounted for this step only, so they never become a layer of the image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links=/wheels simveb \
    && groupadd --system --gid 10001 simveb \
    && useradd --system --uid 10001 --gid simveb --home-dir /data --no-create-home --shell /usr/sbin/nologin simveb \
    && mkdir /data && chown simveb:simveb /data
WORKDIR /app
# config.toml (every default) and migrations/ are read from the working directory, not from the wheel;
# owned by root so the server cannot change them.
COPY config.toml ./
COPY migrations ./migrations
ENV PATH=/opt/venv/bin:$PATH \
    SIMVEB_CONFIG=/app/config.toml \
    SIMVEB_SERVER__ENV=production \
    SIMVEB_SERVER__SANDBOX=false \
    SIMVEB_SERVER__HOST=0.0.0.0 \
    SIMVEB_SERVER__PORT=8000 \
    SIMVEB_SERVER__DATA_DIR=/data
# Older signing keys (kept after a rotation), vehicle imports and upload staging; documents themselves go
# to the S3 store when documents.storage_url is set. A new named volume takes /data's owner from the image.
VOLUME ["/data"]
# Numeric, so a runtime that forbids root (runAsNonRoot) can check it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000
# Ready = database reachable and migrated, every hosted actor up. The first start migrates: start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('SIMVEB_SERVER__PORT', '8000'), timeout=4)"]
ENTRYPOINT ["simveb"]
CMD ["serve"]
