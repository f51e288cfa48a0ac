#!/usr/bin/env python3
"""Validates the manifests in deploy/kubernetes (run by .ci/run).

- Built-in kinds: kubernetes-validate's Kubernetes 1.37 schemas, strict (unknown fields fail).
- Custom resources (not in those schemas): ServiceMonitor and PrometheusRule (prometheus-operator,
  in monitoring/), ScaledObject and TriggerAuthentication (KEDA, in autoscaling/) and RabbitmqCluster (the RabbitMQ
  Cluster Operator, in rabbitmq/), against the openAPIV3Schema of their CRDs vendored in
  deploy/kubernetes/schemas/, made strict the same way (an object with declared properties accepts
  no others, as the API server's strict field validation does); their metadata against the
  Kubernetes ObjectMeta schema.
- Each folder's kustomization.yaml (the base, and the monitoring and autoscaling components and
  the rabbitmq kustomization beside it): every manifest in the folder is either a listed resource
  or the Secret template, every listed resource exists; the base's image name is its
  Deployments'; the base holds built-in kinds only, so it applies on a cluster without any
  operator.
- Across folders: the ScaledObject scales a Deployment of the base and watches the events queue
  of the ConfigMap's QUEUE_PREFIX; the TriggerAuthentication reads the base's Secret.

The validator also checks itself: a ServiceMonitor with an unknown endpoint field and one without
its selector, a PrometheusRule with an unknown rule field or a rule without `expr`, a ScaledObject
without its target and a RabbitmqCluster with an unknown field must be rejected, or this script
fails. (That prometheusrule.yaml holds exactly alerts.yml's rules is a test,
tests/it/deploy/files.rs.)
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


# (apiVersion, kind) → (vendored schema file, where it comes from) of the custom resources
# validated here.
CUSTOM = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("servicemonitor-v1.yaml", "prometheus-operator 0.84.1 CRD schema"),
    ("monitoring.coreos.com/v1", "PrometheusRule"): ("prometheusrule-v1.yaml", "prometheus-operator 0.82.2 CRD schema"),
    ("keda.sh/v1alpha1", "ScaledObject"): ("scaledobject-v1alpha1.yaml", "KEDA 2.20.1 CRD schema"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): ("triggerauthentication-v1alpha1.yaml", "KEDA 2.20.1 CRD schema"),
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): ("rabbitmqcluster-v1beta1.yaml", "RabbitMQ Cluster Operator 2.22.3 CRD schema"),
}
# Folders beside the base, each with its own kustomization.yaml.
EXTRA_FOLDERS = ["monitoring", "autoscaling", "rabbitmq"]


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


def listing(folder, failures):
    """The manifests of `folder` that its kustomization.yaml lists, checked both ways."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    resources = kustomization["resources"]
    present = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    for missing in sorted(set(resources) - present):
        failures.append(f"{folder.name}/kustomization.yaml lists {missing}, which does not exist")
    for unlisted in sorted(present - set(resources) - TEMPLATES):
        failures.append(f"{folder.name}/{unlisted} is neither in kustomization.yaml nor a known template")
    return kustomization, present


def main(folder):
    root = pathlib.Path(folder)
    failures = []
    kustomization, present = listing(root, failures)
    files = [(root, name) for name in sorted(present)]
    for extra in EXTRA_FOLDERS:
        _, names = listing(root / extra, failures)
        files += [(root / extra, name) for name in sorted(names)]

    validators = {
        key: jsonschema.Draft202012Validator(
            strict(yaml.safe_load((root / "schemas" / file).read_text()))
        )
        for key, (file, _) in CUSTOM.items()
    }
    found = {key: [] for key in CUSTOM}
    docs_by_kind = {}
    images = []
    for where, name in files:
        for doc in yaml.safe_load_all((where / name).read_text()):
            if doc is None:
                continue
            shown = name if where == root else f"{where.name}/{name}"
            what = f"{shown}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            key = (doc.get("apiVersion"), doc.get("kind"))
            docs_by_kind.setdefault(doc.get("kind"), []).append((where, doc))
            if key in CUSTOM and where == root:
                failures.append(f"{what}: the base holds an operator's kind, which a cluster without it refuses")
            if key in CUSTOM:
                found[key].append(doc)
                errors = custom_errors(validators[key], doc)
                source = CUSTOM[key][1]
            else:
                try:
                    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
                    errors = []
                except kubernetes_validate.ValidationError as e:
                    errors = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"]
                except kubernetes_validate.SchemaNotFoundError as e:
                    errors = [e.message]
                source = f"Kubernetes {K8S_VERSION} schemas"
            if doc.get("kind") == "Deployment" and where == root:
                images += [c["image"] for c in doc["spec"]["template"]["spec"]["containers"]]
            if errors:
                failures += [f"{what}: {error}" for error in errors]
            else:
                print(f"valid ({source}, strict): {what}")

    for image in kustomization.get("images", []):
        if not any(i.split(":")[0] == image["name"] for i in images):
            failures.append(f"kustomization.yaml images: {image['name']} is no container's image {images}")

    # The pieces refer to each other by name.
    deployments = {d["metadata"]["name"] for w, d in docs_by_kind.get("Deployment", []) if w == root}
    config = next(d for _, d in docs_by_kind["ConfigMap"])
    events = f"{config['data']['QUEUE_PREFIX']}.events"
    secret = yaml.safe_load((root / "secret.example.yaml").read_text())
    for _, scaled in docs_by_kind.get("ScaledObject", []):
        target = scaled["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            failures.append(f"ScaledObject scales {target}, which is none of the Deployments {sorted(deployments)}")
        for trigger in scaled["spec"]["triggers"]:
            if trigger["metadata"].get("queueName") != events:
                failures.append(f"ScaledObject watches {trigger['metadata'].get('queueName')}, not {events}")
    for _, auth in docs_by_kind.get("TriggerAuthentication", []):
        for ref in auth["spec"]["secretTargetRef"]:
            if ref["name"] != secret["metadata"]["name"] or ref["key"] not in secret["stringData"]:
                failures.append(f"TriggerAuthentication reads {ref['name']}/{ref['key']}, which the Secret template lacks")

    for key, docs in found.items():
        if not docs:
            failures.append(f"no {key[1]} found")
    bad = []
    monitor_key = ("monitoring.coreos.com/v1", "ServiceMonitor")
    rule_key = ("monitoring.coreos.com/v1", "PrometheusRule")
    scaled_key = ("keda.sh/v1alpha1", "ScaledObject")
    cluster_key = ("rabbitmq.com/v1beta1", "RabbitmqCluster")
    for monitor in found[monitor_key][:1]:
        unknown = copy.deepcopy(monitor)
        unknown["spec"]["endpoints"][0]["portName"] = "http"
        no_selector = copy.deepcopy(monitor)
        del no_selector["spec"]["selector"]
        bad += [(monitor_key, "an unknown endpoint field", unknown), (monitor_key, "no selector", no_selector)]
    for rule in found[rule_key][:1]:
        unknown = copy.deepcopy(rule)
        unknown["spec"]["groups"][0]["rules"][0]["expression"] = "up == 0"
        no_expr = copy.deepcopy(rule)
        del no_expr["spec"]["groups"][0]["rules"][0]["expr"]
        bad += [(rule_key, "an unknown rule field", unknown), (rule_key, "a rule without expr", no_expr)]
    for scaled in found[scaled_key][:1]:
        no_target = copy.deepcopy(scaled)
        del no_target["spec"]["scaleTargetRef"]
        bad += [(scaled_key, "no scaleTargetRef", no_target)]
    for cluster in found[cluster_key][:1]:
        unknown = copy.deepcopy(cluster)
        unknown["spec"]["nodes"] = 3
        bad += [(cluster_key, "an unknown field", unknown)]
    for key, label, doc in bad:
        if not custom_errors(validators[key], doc):
            failures.append(f"the validator accepts a {key[1]} with {label}")

    for failure in failures:
        print(f"INVALID {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "deploy/kubernetes"))
