# syntax=docker/dockerfile:1
#
# servicekey-operator image.
#   docker build -t servicekey-operator:0.1.0 .
#
# Stage 1 builds a wheel of the project (pyproject.toml, package under operator/) and installs it with
# its dependencies into a virtualenv. Stage 2 is a clean python:3.11-slim that receives only that
# virtualenv: no pip, no setuptools, no compiler, no source tree. It runs as the unprivileged user
# 65532 and works with a read-only root filesystem (the chart mounts a writable emptyDir at /tmp).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Only what the wheel is built from (see .dockerignore).
COPY pyproject.toml README.md ./
COPY operator/ operator/

# pip byte-compiles what it installs, so nothing needs writing at run time. The installer itself is
# removed from the virtualenv afterwards: the runtime needs neither it nor setuptools.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install /wheels/*.whl \
 && /opt/venv/bin/pip uninstall --yes pip setuptools wheel

FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="servicekey-operator" \
      org.opencontainers.image.description="Keeps service signing keys in Vault and publishes their public keys as PEM and JWKS" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

# The base image's own installer is not needed at run time either.
RUN python -m pip uninstall --yes pip setuptools wheel >/dev/null 2>&1 || true \
 && rm -rf /root/.cache

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

USER 65532:65532

# 8080: Prometheus /metrics (SERVICEKEY_METRICS_PORT); 8081: kopf liveness /healthz (SERVICEKEY_HEALTH_PORT).
# The JWKS server is the same image with the arguments "jwks-server ..." (its one port: 8080).
EXPOSE 8080 8081

ENTRYPOINT ["servicekey-operator"]
CMD ["run"]
