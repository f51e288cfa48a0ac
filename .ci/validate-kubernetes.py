#!/usr/bin/env python3
"""Validates the manifests in deploy/kubernetes (run by .ci/run).

- Built-in kinds: kubernetes-validate's Kubernetes 1.37 schemas, strict (unknown fields fail).
- ServiceMonitor (not in those schemas): the openAPIV3Schema of prometheus-operator's CRD,
  vendored in deploy/kubernetes/schemas/, made strict the same way (an object with declared
  properties accepts no others, as the API server's strict field validation does); its metadata
  against the Kubernetes ObjectMeta schema.
- kustomization.yaml: every manifest in the folder is either a listed resource or the Secret
  template, every listed resource exists, and its image name is the Deployment's.

The validator also checks itself: a ServiceMonitor with an unknown endpoint field and one without
its selector must be rejected, or this script fails.
"""

import copy
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

K8S_VERSION = "1.37.0"
TEMPLATES = {"secret.example.yaml"}


def strict(schema):
    """Objects with declared properties accept no others (unless the schema says so)."""
    if isinstance(schema, dict):
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


def servicemonitor_errors(validator, doc):
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]
    # Metadata against the real ObjectMeta schema, by way of a ConfigMap that carries it.
    try:
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})},
            K8S_VERSION,
            strict=True,
        )
    except kubernetes_validate.ValidationError as e:
        errors.append(f"metadata: {e.message}")
    return errors


def main(folder):
    root = pathlib.Path(folder)
    failures = []
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    resources = kustomization["resources"]
    present = {p.name for p in root.glob("*.yaml")} - {"kustomization.yaml"}
    for missing in sorted(set(resources) - present):
        failures.append(f"kustomization.yaml lists {missing}, which does not exist")
    for unlisted in sorted(present - set(resources) - TEMPLATES):
        failures.append(f"{unlisted} is neither in kustomization.yaml nor a known template")

    schema = yaml.safe_load((root / "schemas" / "servicemonitor-v1.yaml").read_text())
    monitor_validator = jsonschema.Draft202012Validator(strict(copy.deepcopy(schema)))
    monitors = []
    images = []
    for name in sorted(present):
        for doc in yaml.safe_load_all((root / name).read_text()):
            if doc is None:
                continue
            what = f"{name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if doc.get("apiVersion") == "monitoring.coreos.com/v1" and doc.get("kind") == "ServiceMonitor":
                monitors.append(doc)
                errors = servicemonitor_errors(monitor_validator, doc)
                source = "prometheus-operator 0.84.1 CRD schema"
            else:
                try:
                    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
                    errors = []
                except kubernetes_validate.ValidationError as e:
                    errors = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"]
                except kubernetes_validate.SchemaNotFoundError as e:
                    errors = [e.message]
                source = f"Kubernetes {K8S_VERSION} schemas"
            if doc.get("kind") == "Deployment":
                images += [c["image"] for c in doc["spec"]["template"]["spec"]["containers"]]
            if errors:
                failures += [f"{what}: {error}" for error in errors]
            else:
                print(f"valid ({source}, strict): {what}")

    for image in kustomization.get("images", []):
        if not any(i.split(":")[0] == image["name"] for i in images):
            failures.append(f"kustomization.yaml images: {image['name']} is no container's image {images}")

    if not monitors:
        failures.append("no ServiceMonitor found")
    for monitor in monitors[:1]:
        unknown = copy.deepcopy(monitor)
        unknown["spec"]["endpoints"][0]["portName"] = "http"
        no_selector = copy.deepcopy(monitor)
        del no_selector["spec"]["selector"]
        for label, bad in [("an unknown endpoint field", unknown), ("no selector", no_selector)]:
            if not servicemonitor_errors(monitor_validator, bad):
                failures.append(f"the validator accepts a ServiceMonitor with {label}")

    for failure in failures:
        print(f"INVALID {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "deploy/kubernetes"))
