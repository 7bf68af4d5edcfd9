# The pattern for a Python op image: the op's package and the Python SDK in a virtualenv at
# /opt/op, /usr/local/bin/op a link to the op's console script, on a slim Debian Python, as
# a non-root user. Each op version is its own image, released on its own cycle:
#   docker build -f docker/python-op.Dockerfile --build-arg OP=loss-aggregate -t opflow/loss-aggregate:1.0.0 .
# (from the repository root; OP is the op's package in remote-ops/, whose console script has
# its name, or give --build-arg SCRIPT=<name>). The build fetches the op's dependencies from
# PyPI; the worker needs no network but the broker, no writable filesystem and no pip. The
# chart runs it as it runs a Rust op; a Python op is no single binary to lend, so the
# chart's registration Job (`register: description`) runs `op --describe > /ops/op.json`
# here, with the shell, for `opflow ops add --description`.

FROM python:3.11-slim-bookworm AS build
ARG OP
RUN test -n "$OP" || { echo "set --build-arg OP=<package in remote-ops/>" >&2; exit 1; }
WORKDIR /src
COPY sdk/python sdk/python
COPY remote-ops/${OP} remote-ops/${OP}
RUN test -f "remote-ops/$OP/pyproject.toml" \
    || { echo "remote-ops/$OP has no pyproject.toml: a Rust op? (docker/op.Dockerfile)" >&2; exit 1; }
# Wheels of the SDK and the op, from this tree (never an `opflow-sdk` from PyPI), then a
# virtualenv without pip holding them and their dependencies, compiled to bytecode.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --disable-pip-version-check --no-deps --wheel-dir /wheels ./sdk/python "./remote-ops/$OP" \
    && python -m venv --without-pip /opt/op \
    && pip --python /opt/op/bin/python install --disable-pip-version-check --root-user-action=ignore /wheels/*.whl

FROM python:3.11-slim-bookworm
ARG OP
ARG SCRIPT
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --gid 10001 opflow \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin opflow
COPY --from=build /opt/op /opt/op
RUN script="${SCRIPT:-$OP}" \
    && { test -x "/opt/op/bin/$script" \
         || { echo "remote-ops/$OP installs no console script $script (--build-arg SCRIPT=...)" >&2; exit 1; }; } \
    && ln -s "/opt/op/bin/$script" /usr/local/bin/op
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/op"]
