# batch-gateway container image (multi-stage). Not built in CI: no container
# engine runs there. Build with `docker build -t batch-gateway .`.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
RUN cargo build --release --locked --bin batch-gateway

# Small, non-root, with CA certificates (webpki roots are compiled in; the
# system store is for tools that may run beside the gateway).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 gateway \
 && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /src/target/release/batch-gateway /usr/local/bin/batch-gateway
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/batch-gateway"]
CMD ["serve", "--config", "/etc/batch-gateway/config/gateway.toml"]
