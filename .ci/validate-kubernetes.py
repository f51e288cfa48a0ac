#!/usr/bin/env python3
"""Validates the manifests in deploy/kubernetes (run by .ci/run).

- Built-in kinds: kubernetes-validate's Kubernetes 1.37 schemas, strict (unknown fields fail).
- ServiceMonitor and PrometheusRule (not in those schemas): the openAPIV3Schema of
  prometheus-operator's CRDs, vendored in deploy/kubernetes/schemas/, made strict the same way (an
  object with declared properties accepts no others, as the API server's strict field validation
  does); their metadata against the Kubernetes ObjectMeta schema.
- kustomization.yaml: every manifest in the folder is either a listed resource or the Secret
  template, every listed resource exists, and its image name is the Deployment's.

The validator also checks itself: a ServiceMonitor with an unknown endpoint field and one without
its selector, and a PrometheusRule with an unknown rule field or a rule without `expr`, must be
rejected, or this script fails. (That prometheusrule.yaml holds exactly alerts.yml's rules is a
test, tests/it/deploy/files.rs.)
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


# (kind, vendored schema file, where it comes from) of the custom resources validated here.
CUSTOM = {
    "ServiceMonitor": ("servicemonitor-v1.yaml", "prometheus-operator 0.84.1 CRD schema"),
    "PrometheusRule": ("prometheusrule-v1.yaml", "prometheus-operator 0.82.2 CRD schema"),
}


def custom_errors(validator, doc):
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

    validators = {
        kind: jsonschema.Draft202012Validator(
            strict(yaml.safe_load((root / "schemas" / file).read_text()))
        )
        for kind, (file, _) in CUSTOM.items()
    }
    found = {kind: [] for kind in CUSTOM}
    images = []
    for name in sorted(present):
        for doc in yaml.safe_load_all((root / name).read_text()):
            if doc is None:
                continue
            what = f"{name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if doc.get("apiVersion") == "monitoring.coreos.com/v1" and doc.get("kind") in CUSTOM:
                found[doc["kind"]].append(doc)
                errors = custom_errors(validators[doc["kind"]], doc)
                source = CUSTOM[doc["kind"]][1]
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

    for kind, docs in found.items():
        if not docs:
            failures.append(f"no {kind} found")
    bad = []
    for monitor in found["ServiceMonitor"][:1]:
        unknown = copy.deepcopy(monitor)
        unknown["spec"]["endpoints"][0]["portName"] = "http"
        no_selector = copy.deepcopy(monitor)
        del no_selector["spec"]["selector"]
        bad += [("ServiceMonitor", "an unknown endpoint field", unknown), ("ServiceMonitor", "no selector", no_selector)]
    for rule in found["PrometheusRule"][:1]:
        unknown = copy.deepcopy(rule)
        unknown["spec"]["groups"][0]["rules"][0]["expression"] = "up == 0"
        no_expr = copy.deepcopy(rule)
        del no_expr["spec"]["groups"][0]["rules"][0]["expr"]
        bad += [("PrometheusRule", "an unknown rule field", unknown), ("PrometheusRule", "a rule without expr", no_expr)]
    for kind, label, doc in bad:
        if not custom_errors(validators[kind], doc):
            failures.append(f"the validator accepts a {kind} with {label}")

    for failure in failures:
        print(f"INVALID {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "deploy/kubernetes"))
