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
ENV PDP_PORT=7766 \
    MIMALLOC_PURGE_DELAY=0
EXPOSE 7766
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/pdp"]
