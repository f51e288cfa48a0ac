# Build stage: compile the release binary. Dependencies are built in their own layer so a code
# change does not rebuild them. The toolchain is pinned (CI builds with the same one); it must
# be at least Cargo.toml's rust-version, which tests/it/deploy checks.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Placeholders for every target Cargo.toml declares (cargo refuses a manifest whose bench or test
# file is missing, even when building only the binary).
RUN mkdir -p src benches tests/it \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/pipeline.rs && touch tests/it/main.rs \
    && cargo build --release --locked --bin webhook-dispatcher \
    && rm -rf src
COPY src ./src
COPY migrations ./migrations
# Touch the sources so cargo rebuilds them rather than reusing the placeholder's artefacts.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin webhook-dispatcher

# Runtime stage: a small Debian with CA certificates (HTTPS endpoints), a non-root user and a
# data folder for the default SQLite store.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --create-home dispatcher
COPY --from=build /src/target/release/webhook-dispatcher /usr/local/bin/webhook-dispatcher
USER 10001
WORKDIR /data
ENV DATABASE_URL=sqlite:///data/webhook-dispatcher.db \
    LISTEN_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["webhook-dispatcher"]
CMD ["serve"]
