# syntax=docker/dockerfile:1
# One image for the node agent (`otus daemon --kubernetes`, root with NET_RAW/NET_ADMIN) and
# the operator (`python -m otus_operator`, runs as the non-root user 65532).
#   docker build -t ghcr.io/firestige/otus:$(version) .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel needs (see .dockerignore): the package, the operator, the metadata.
COPY pyproject.toml README.md ./
COPY otus ./otus
COPY operator ./operator
RUN python -m pip wheel --wheel-dir /wheels ".[operator]" \
 && python -m venv /opt/otus \
 && /opt/otus/bin/pip install --no-index --find-links /wheels "otus[operator]" \
 && /opt/otus/bin/python -c "import otus, otus_operator.handlers, kopf, aiohttp"

FROM ${PYTHON_IMAGE}
# libpcap compiles the tcpdump-syntax capture filters; tini reaps and forwards signals.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpcap0.8 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 otus \
 && useradd --system --uid 65532 --gid otus --home-dir /nonexistent --shell /usr/sbin/nologin otus
COPY --from=builder /opt/otus /opt/otus
ENV PATH=/opt/otus/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OTUS_RUNTIME_DIR=/run/otus
# The operator's user; the agent's DaemonSet sets runAsUser 0 and adds NET_RAW/NET_ADMIN.
USER 65532:65532
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "otus_operator"]
