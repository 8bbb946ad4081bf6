# syntax=docker/dockerfile:1
# Tollgate's container image: both binaries (tollgate-authz, tollgate-ratelimit) on a distroless
# runtime with glibc, CA certificates and a non-root user, nothing else (no shell, no package
# manager). The Helm chart (helm/tollgate) runs it with `command: [tollgate-authz]` or
# `[tollgate-ratelimit]`.
#
#   docker build -t registry.example.com/platform/tollgate:0.1.0 .
#
# The `envoy` target is Envoy 1.40 carrying Tollgate in-process (libtollgate_envoy.so on its
# module search path), which the chart runs with `envoy.mode: inprocess`:
#
#   docker build --target envoy -t registry.example.com/platform/tollgate-envoy:0.1.0 .

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Cargo.lock is honoured (--locked); the caches only speed up rebuilds and never reach the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tollgate-authz -p tollgate-ratelimit -p tollgate-envoy \
    && install -D -m 0755 -t /out target/release/tollgate-authz target/release/tollgate-ratelimit \
    && install -D -m 0755 -t /module target/release/libtollgate_envoy.so

# The module is built for exactly this Envoy minor (docs/envoy-module.md): bump both together.
FROM envoyproxy/envoy:v1.40.0 AS envoy
COPY --from=build /module/libtollgate_envoy.so /usr/local/lib/tollgate/
ENV ENVOY_DYNAMIC_MODULES_SEARCH_PATH=/usr/local/lib/tollgate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
# 65532 is distroless's `nonroot`; the chart's securityContext runs as the same ids.
USER 65532:65532
# The binaries' default ports (a test holds this line to them): authz gRPC, side listener,
# admin API; ratelimit gRPC, side listener.
EXPOSE 9001 9091 9092 8081 8080
ENTRYPOINT []
CMD ["tollgate-authz", "--help"]
