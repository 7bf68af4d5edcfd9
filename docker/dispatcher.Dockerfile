# The dispatcher image: the `opflow` binary on a slim Debian, as a non-root user.
#   docker build -f docker/dispatcher.Dockerfile -t opflow/dispatcher:0.1.0 .
# (from the repository root). The Helm chart runs it as `opflow dispatcher`, and as
# `opflow ops add` / `opflow ops scale` in each op's registration Job (hence the shell).

FROM rust:1.94-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p opflow-dispatcher --bin opflow \
    && install -m 0755 target/release/opflow /opflow

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 opflow \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin opflow
COPY --from=build /opflow /usr/local/bin/opflow
USER 10001:10001
EXPOSE 7600
ENTRYPOINT ["opflow"]
CMD ["dispatcher"]
