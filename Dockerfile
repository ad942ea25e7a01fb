# One image for every Parley service. Each container picks its service with
# its command (`python -m services.auth|keys|gateway|delivery|rooms|notifier|web`)
# and is configured only by PARLEY_* environment variables (docs/deployment.md).
#
#   docker build -t parley:dev .

# --- build: install the locked dependencies and Parley into a virtualenv ---
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/parley
ENV PATH=/opt/parley/bin:$PATH

WORKDIR /src
# Dependencies first: this layer is rebuilt only when the pins change. Runtime
# dependencies only (no `embedded` or `dev` extras), every download checked
# against the lock's hashes.
COPY requirements-runtime.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements-runtime.lock
COPY pyproject.toml ./
COPY services ./services
COPY client/parley ./client/parley
COPY contract/parley_contract ./contract/parley_contract
# Parley itself: nothing fetched (no deps; the locked build backend).
RUN pip install --no-cache-dir --no-deps --no-build-isolation .

# --- runtime: the virtualenv on a clean slim base, as an unprivileged user ---
FROM python:3.11-slim

LABEL org.opencontainers.image.title="parley" \
      org.opencontainers.image.description="Parley end-to-end-encrypted chat services" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/parley/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PARLEY_HOST=0.0.0.0

RUN groupadd --system --gid 10001 parley \
    && useradd --system --no-log-init --uid 10001 --gid parley \
       --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin parley

COPY --from=build /opt/parley /opt/parley

WORKDIR /app
USER 10001:10001

# auth 8101, keys 8102, gateway 8103, delivery 8105, web 8106, rooms 8107,
# notifier 8108 (PARLEY_PORT sets it).
EXPOSE 8101 8102 8103 8105 8106 8107 8108
STOPSIGNAL SIGTERM
CMD ["python", "-m", "services.gateway"]
