# syntax=docker/dockerfile:1
#
# One image for every scorecast command: the entry point is `scorecast`, so a
# container's command is a subcommand and its flags:
#
#   docker build -t scorecast .
#   docker run --rm -p 8080:8080 scorecast gateway --nats nats://nats:4222 --host 0.0.0.0
#   docker run --rm scorecast simulate --nats nats://nats:4222 --replicas 3
#
# Every flag also reads SCORECAST_<FLAG> from the environment (SCORECAST_NATS).
# The `load` target is the same installation plus locust, for the load test
# (docker-compose.yml, profile `load`). The default target is `runtime`, the
# last stage of this file.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- base: the interpreter, the user and the environment both images share --
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/scorecast/bin:$PATH
# A fixed numeric uid, so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 scorecast \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin scorecast

# --- build: install the project and its dependencies into a virtualenv ------
# All dependencies ship wheels for CPython 3.11 on amd64 and arm64, so no
# compiler is needed; the virtualenv is copied whole into the final images.
# PIP_FLAGS: where a build has no network (`make test-stack` builds under
# podman here), `--no-index --find-links=/src/wheelhouse` installs from wheels
# built on the host (`pip wheel -w wheelhouse . setuptools`).
FROM base AS build
ARG PIP_FLAGS=""
RUN python -m venv /opt/scorecast
WORKDIR /src
COPY . .
RUN pip install . ${PIP_FLAGS} && pip check

FROM build AS build-load
# the load tools are their own distribution (loadtest/pyproject.toml), never
# in the runtime image
RUN pip install ./loadtest ${PIP_FLAGS}

# --- load: locust master or worker -------------------------------------------
FROM base AS load
COPY --from=build-load /opt/scorecast /opt/scorecast
COPY loadtest/ /app/loadtest/
WORKDIR /app/loadtest
USER 10001:10001
EXPOSE 8089 5557
ENTRYPOINT ["locust"]
CMD ["-f", "/app/loadtest/locustfile.py"]

# --- runtime: gateway, simulate, ingest, replay (the default target) ---------
FROM base AS runtime
COPY --from=build /opt/scorecast /opt/scorecast
WORKDIR /tmp
USER 10001:10001
# 8080: gateway (WebSocket /ws, /healthz, /readyz, /metrics); 8090: ingest
EXPOSE 8080 8090
# SIGTERM starts the gateway's drain (reconnect hints over --drain-window).
STOPSIGNAL SIGTERM
ENTRYPOINT ["scorecast"]
CMD ["gateway", "--host", "0.0.0.0", "--port", "8080"]
