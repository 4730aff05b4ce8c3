# syntax=docker/dockerfile:1
#
# worker-api-gateway container image.
#
#   docker build -t worker-api-gateway .
#   docker run --rm -p 8000:8000 \
#     -e MONGODB_URI=mongodb://USER:PASSWORD@host.docker.internal:27017/?authSource=admin \
#     -e RABBITMQ_URL=amqp://USER:PASSWORD@host.docker.internal:5672/%2f \
#     -e API_KEYS_FILE=/run/secrets/api-keys.toml \
#     -v "$PWD/api-keys.toml:/run/secrets/api-keys.toml:ro" \
#     worker-api-gateway
#
# (Secrets in URLs are never logged: the gateway masks passwords and query
# values. Prefer an --env-file to -e for them, so they stay out of shell history.)
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.

ARG RUST_VERSION=1.95

########################################################################
# Builder: compiles a release binary. Dependencies are compiled first
# against dummy sources so that editing src/ does not rebuild them.
########################################################################
FROM rust:${RUST_VERSION}-slim-bookworm AS builder

WORKDIR /app
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0

# 1. Manifests only, plus dummy sources matching the [lib] and [[bin]]
#    targets of Cargo.toml: this layer (and the dependency build below)
#    is invalidated only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src \
 && printf 'fn main() {}\n' > src/main.rs \
 && : > src/lib.rs

RUN --mount=type=cache,id=worker-api-gateway-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=worker-api-gateway-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=worker-api-gateway-target,target=/app/target,sharing=locked \
    cargo build --release --locked --bin worker-api-gateway

# 2. Real sources. COPY keeps the files' own modification times, which can
#    be older than the dummy build's artifacts: touch the crate roots so
#    cargo always recompiles the crate itself.
RUN rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs

# The target directory is a cache mount (absent from the layer), so the
# binary is copied out of it.
RUN --mount=type=cache,id=worker-api-gateway-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=worker-api-gateway-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=worker-api-gateway-target,target=/app/target,sharing=locked \
    cargo build --release --locked --bin worker-api-gateway \
 && cp target/release/worker-api-gateway /app/worker-api-gateway

########################################################################
# Runtime: small Debian with CA certificates (rustls, no libssl needed)
# and curl for the HEALTHCHECK.
########################################################################
FROM debian:bookworm-slim AS runtime

# Versions are not pinned: bookworm-slim plus its security updates decide.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app \
        --no-create-home --shell /usr/sbin/nologin gateway

WORKDIR /app

COPY --from=builder /app/worker-api-gateway /usr/local/bin/worker-api-gateway
# Topic definitions: owned by root, read-only for the service user.
COPY topics/ /app/topics/

# HOST/PORT: listen on every interface of the container, port 8000.
ENV HOST=0.0.0.0 \
    PORT=8000 \
    TOPICS_DIR=/app/topics \
    LOG_FORMAT=json

EXPOSE 8000

USER 10001:10001

# Liveness, not readiness: /live answers 200 while the process serves, so a
# MongoDB or RabbitMQ outage (which /health reports as 503, and the gateway
# rides out on its own) never marks the container unhealthy and gets it
# restarted by whatever acts on health. Readiness stays on /health: point a
# load balancer or reverse proxy at it. /live needs no API key. curl --fail
# turns any status >= 400 into a non-zero exit, reported as "unhealthy"
# (exit 1). Run through sh so that ${PORT} is expanded at check time, from
# the container's environment (GATEWAY_MODE=worker serves /live on PORT too).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "curl --fail --silent --show-error --max-time 4 --output /dev/null \"http://127.0.0.1:${PORT}/live\" || exit 1"]

# The binary handles SIGTERM itself (graceful shutdown, see
# SHUTDOWN_GRACE_SECONDS); give `docker stop` a longer timeout than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["worker-api-gateway"]
