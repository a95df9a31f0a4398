# syntax=docker/dockerfile:1
# Sluice's container image: ghcr.io/sluice-proxy/sluice (the image deploy/ runs).
#   docker build -t ghcr.io/sluice-proxy/sluice:0.1.0 .
#
# Runtime base: distroless cc-debian12 (glibc, libgcc_s, CA certificates, tzdata, a "nonroot"
# user 65532; no shell, no package manager), not scratch with a static musl build:
# - the builder is Debian 12 too, so the glibc binary runs unchanged, and ring (rustls's
#   crypto) builds with the builder's gcc; musl would need a musl C toolchain for ring;
# - musl's allocator is markedly slower under many threads, which a proxy is (the binary
#   links jemalloc anyway, built here with the builder's make and gcc);
# - the CA bundle is there for ACME directories and HTTPS upstreams.

FROM rust:1-bookworm AS build
WORKDIR /src
# Everything the crate needs (.dockerignore leaves out target/ and the rest). Cargo.toml
# declares the benches, so benches/ is copied as well.
COPY . .
# --locked: build exactly Cargo.lock. The cache mounts (BuildKit) keep downloaded crates and
# compiled dependencies between builds; the binary is copied out of the cached target/.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin sluice \
    && cp target/release/sluice /usr/local/bin/sluice

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/sluice /usr/local/bin/sluice
# uid:gid 65532 ("nonroot"); deploy/ sets the same ids and runAsNonRoot.
USER 65532:65532
# The binary's defaults: HTTP 80, HTTPS 443, /healthz and /metrics on 10254 (ingress-nginx's
# ports, so its container arguments keep working). Docker lets a non-root process bind
# ports below 1024 inside a container; Kubernetes does not, so deploy/ passes
# --http-port=8080 --https-port=8443 and its Services map 80/443 to them.
EXPOSE 80 443 10254
ENTRYPOINT ["/usr/local/bin/sluice"]
