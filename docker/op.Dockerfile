# The pattern for an op image: one op binary, at /usr/local/bin/op, on a slim Debian, as
# a non-root user. Each op version is its own image, released on its own cycle:
#   docker build -f docker/op.Dockerfile --build-arg OP=price-paths -t opflow/price-paths:1.0.0 .
# (from the repository root; OP is the op's package in remote-ops/). The worker needs no
# writable filesystem and no shell; `cp` is there for the chart's registration Job, which
# borrows the binary.

FROM rust:1.94-bookworm AS build
ARG OP
WORKDIR /src
COPY . .
RUN test -n "$OP" || { echo "set --build-arg OP=<package in remote-ops/>" >&2; exit 1; }
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p "$OP" \
    && install -m 0755 "target/release/$OP" /op

FROM debian:bookworm-slim
RUN groupadd --gid 10001 opflow \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin opflow
COPY --from=build /op /usr/local/bin/op
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/op"]
