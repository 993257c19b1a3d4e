# Multi-stage build: a locked release build, then a minimal non-root
# runtime image (distroless, glibc) holding only the binary and config/.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin pdp

FROM gcr.io/distroless/cc-debian12:nonroot
WORKDIR /app
COPY --from=build /src/target/release/pdp /usr/local/bin/pdp
COPY --from=build /src/config /app/config
# Without PDP_API_KEY the PDP listens on loopback only, which is what a
# sidecar sharing the pod's network namespace needs; set the key to sync
# from the control plane and to authenticate callers.
# mimalloc: return the pages a snapshot swap frees at once, and keep to
# small pages: transparent huge pages held a fifth more memory for a few
# percent of bulk throughput (docs/performance.md, Allocator settings).
ENV PDP_PORT=7766 \
    MIMALLOC_PURGE_DELAY=0 \
    MIMALLOC_ALLOW_THP=0
EXPOSE 7766
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/pdp"]
