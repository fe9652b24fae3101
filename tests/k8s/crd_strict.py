"""Validate custom resources against the openAPIV3Schema of their CRD the way the API server
does with strict field validation (kubectl's default): an unknown field is an error.

kubernetes-validate only knows built-in kinds (a custom resource gets a WARN and passes), so the
CRD's own schema is applied here. A structural CRD schema without
x-kubernetes-preserve-unknown-fields makes the API server know every field; JSON Schema allows
unknown properties unless told otherwise, so `additionalProperties: false` is added to every
object schema that lists `properties`.

Usage: python crd_strict.py CRD.yaml CR.yaml...   (run with the kubernetes-validate venv's
python, which has pyyaml and jsonschema). Prints one line per problem, or `ok KIND/NAME`, per
custom resource; exit 1 if any resource fails, 2 on bad input.
"""
import sys

import jsonschema
import yaml


def strict(schema):
    """Returns the schema with unknown properties forbidden wherever properties are listed."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            # Property names are data, not schema keywords: recurse into each value only.
            out[key] = {name: strict(sub) for name, sub in value.items()}
        else:
            out[key] = strict(value)
    if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


def load(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def main(crd_path, cr_paths):
    schemas = {}
    for crd in load(crd_path):
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for version in spec["versions"]:
            api_version = f"{spec['group']}/{version['name']}"
            schemas[(api_version, spec["names"]["kind"])] = strict(
                version["schema"]["openAPIV3Schema"]
            )
    if not schemas:
        print(f"{crd_path}: no CustomResourceDefinition", file=sys.stderr)
        return 2
    failed = False
    for path in cr_paths:
        for cr in load(path):
            kind = cr.get("kind")
            name = (cr.get("metadata") or {}).get("name", "?")
            schema = schemas.get((cr.get("apiVersion"), kind))
            if schema is None:
                print(f"{path}: {cr.get('apiVersion')} {kind}/{name}: no CRD for it")
                failed = True
                continue
            # metadata is checked by the API server's ObjectMeta rules, not by the CRD schema.
            body = {k: v for k, v in cr.items() if k not in ("apiVersion", "kind", "metadata")}
            errors = sorted(
                jsonschema.Draft7Validator(schema).iter_errors(body),
                key=lambda e: list(map(str, e.path)),
            )
            for e in errors:
                where = ".".join(map(str, e.path)) or "<root>"
                print(f"{path}: {kind}/{name}: {where}: {e.message}")
            if errors:
                failed = True
            else:
                print(f"ok {kind}/{name}")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
