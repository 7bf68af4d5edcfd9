"""Derives the KEDA schemas in keda-<version>/ from a registry package, so that anyone can
check where they came from and regenerate them.

KEDA publishes its CRDs (with their openAPIV3Schema) only in its source repository; the
package registries carry them in derived form. `cloudcoil-models-keda` on PyPI holds
pydantic models generated from one KEDA release's CRDs (2.16.1.0: KEDA v2.16.1). This
turns them into JSON Schema and makes them strict the way `kubeconform -strict` is: an
object's unknown property is an error (Kubernetes would silently drop it, and a typo
such as `minReplicaCont` would then go unnoticed), and apiVersion and kind are required.

    python3 -m venv /tmp/keda-schemas && /tmp/keda-schemas/bin/pip install cloudcoil-models-keda==2.16.1.0
    /tmp/keda-schemas/bin/python scripts/manifest-schemas/derive-keda.py
"""

import importlib.metadata
import json
import pathlib

from cloudcoil.models.keda import v1alpha1

PACKAGE = "cloudcoil.models.keda"
KINDS = ["ScaledObject", "ScaledJob", "TriggerAuthentication", "ClusterTriggerAuthentication"]


def strict(node):
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            strict(value)
    elif isinstance(node, list):
        for value in node:
            strict(value)


def main():
    package_version = importlib.metadata.version(PACKAGE)
    keda_version = ".".join(package_version.split(".")[:3])
    out = pathlib.Path(__file__).parent / f"keda-{keda_version}"
    out.mkdir(exist_ok=True)
    for kind in KINDS:
        schema = getattr(v1alpha1, kind).model_json_schema(by_alias=True, mode="validation")
        strict(schema)
        schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind"})
        schema["$comment"] = (
            f"KEDA v{keda_version} {kind} (keda.sh/v1alpha1), derived from PyPI {PACKAGE} "
            f"{package_version} by derive-keda.py"
        )
        path = out / f"{kind.lower()}-keda-v1alpha1.json"
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
