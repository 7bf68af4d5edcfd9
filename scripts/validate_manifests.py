"""Validates Kubernetes manifests offline against the JSON schemas kept in
scripts/manifest-schemas/: each YAML document by its apiVersion and kind, strictly (an
unknown field is an error). Run it through scripts/validate-manifests.sh, which provides
its two packages.

Usage: validate_manifests.py --schemas DIR [--schemas DIR ...] FILE_OR_DIR ...
Exit status: 0 when every document is valid, 1 otherwise.
"""

import argparse
import json
import pathlib
import sys

import jsonschema
import referencing
import yaml


def schema_file_name(api_version, kind):
    """`apps/v1` Deployment -> deployment-apps-v1.json; `v1` Service -> service-v1.json;
    `keda.sh/v1alpha1` ScaledObject -> scaledobject-keda-v1alpha1.json."""
    if "/" in api_version:
        group, version = api_version.split("/", 1)
        return f"{kind.lower()}-{group.split('.')[0]}-{version}.json"
    return f"{kind.lower()}-{api_version}.json"


class Schemas:
    def __init__(self, dirs):
        self.dirs = [pathlib.Path(d).resolve() for d in dirs]
        self.registry = referencing.Registry(retrieve=self._retrieve)

    def _retrieve(self, uri):
        # The Kubernetes schemas refer to `/api/_definitions.json`: a file beside them.
        name = pathlib.PurePosixPath(uri.removeprefix("file://")).name
        path = next((d / name for d in self.dirs if (d / name).exists()), None)
        if path is None:
            raise FileNotFoundError(f"{uri}: no {name} in {', '.join(map(str, self.dirs))}")
        return referencing.Resource.from_contents(
            json.loads(path.read_text()), default_specification=referencing.jsonschema.DRAFT7
        )

    def find(self, api_version, kind):
        name = schema_file_name(api_version, kind)
        for d in self.dirs:
            path = d / name
            if path.exists():
                return path
        return None

    def validator(self, path):
        schema = json.loads(path.read_text())
        schema.setdefault("$id", path.as_uri())
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
        return cls(schema, registry=self.registry)


def documents(paths):
    for arg in paths:
        p = pathlib.Path(arg)
        files = sorted(p.rglob("*.yaml")) + sorted(p.rglob("*.yml")) if p.is_dir() else [p]
        for f in files:
            try:
                docs = list(yaml.safe_load_all(f.read_text()))
            except yaml.YAMLError as e:
                yield f, 0, None, f"not YAML: {e}"
                continue
            for i, doc in enumerate(docs, 1):
                if doc is not None:
                    yield f, i, doc, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemas", action="append", required=True, help="a directory of JSON schemas")
    parser.add_argument("paths", nargs="+", help="manifest files, or directories searched for *.yaml")
    args = parser.parse_args()
    schemas = Schemas(args.schemas)
    valid = invalid = 0
    for path, index, doc, problem in documents(args.paths):
        where = f"{path}:{index}" if index else str(path)
        if problem is None and not isinstance(doc, dict):
            problem = "not a Kubernetes object (expected a mapping with apiVersion and kind)"
        if problem is None:
            api_version, kind = doc.get("apiVersion"), doc.get("kind")
            name = (doc.get("metadata") or {}).get("name", "?")
            where = f"{where} ({kind} {name})"
            schema = schemas.find(str(api_version), str(kind)) if api_version and kind else None
            if schema is None:
                problem = (
                    f"no schema for apiVersion {api_version!r} kind {kind!r} in "
                    f"{', '.join(map(str, args.schemas))}: a typo, or a kind whose schema is not kept here"
                )
            else:
                errors = sorted(schemas.validator(schema).iter_errors(doc), key=lambda e: list(e.path))
                if errors:
                    problem = "\n".join(
                        f"  at /{'/'.join(map(str, e.path))}: {e.message}" for e in errors
                    )
        if problem is None:
            valid += 1
            print(f"valid    {where}")
        else:
            invalid += 1
            print(f"INVALID  {where}\n{problem if problem.startswith('  ') else '  ' + problem}")
    print(f"{valid} valid, {invalid} invalid")
    if valid + invalid == 0:
        print("no manifests found", file=sys.stderr)
        return 1
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
