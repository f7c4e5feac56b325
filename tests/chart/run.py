#!/usr/bin/env python3
"""Offline checks of the multicsi Helm chart and the example manifests.

Called by scripts/chart-test.sh, which provides helm and a Python environment
with kubernetes-validate. Every check prints one line; the last line is the
summary "N passed, M failed". Exit status 1 when anything failed.

What is checked:
  * helm lint --strict, with the defaults and with every examples/values-*.yaml;
  * helm template of every example and of each switch on and off, with the
    API versions `helm install` would see: Helm installs the chart's crds/
    before rendering, so their kinds are served (three cluster states are
    modelled: fresh cluster, CRDs already there, --skip-crds without them);
  * install order: every rendered kind is built into Kubernetes or defined by
    a CRD of the chart's crds/ (installed ahead of the templates); a CRD
    rendered as a template, next to objects of its kind, fails on a fresh
    cluster ("no matches for kind");
  * one owner per state directory: at most one workload mounts it, a DaemonSet
    whose update never surges a second pod onto a host; for hostpath the pod
    that serves the controller has the host's /dev, mounts and privileges;
  * every rendered object against the Kubernetes OpenAPI schemas of several
    Kubernetes versions (kubernetes-validate, strict: unknown fields fail);
    custom resources have no schema there, so they are checked on purpose:
    VolumeSnapshotClass and VolumeSnapshot against the CRD schemas of the
    chart's crds/, ServiceMonitor structurally against the rendered Services;
    any other kind without a schema fails;
  * what the workloads carry (containers, args, env, mounts, host access) per
    backend, RBAC scope, StorageClasses, snapshot objects, credentials handling;
  * values.schema.json and the chart's own checks reject bad values: each bad
    input must fail to render, for the expected reason;
  * the manifests in examples/;
  * the Dockerfile builds the image the chart defaults to (appVersion, binary,
    the node tools in the runtime stage).
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import traceback

import jsonschema
import kubernetes_validate
import yaml

RELEASE = "multicsi"
# Kinds of another operator's CRDs that a user switches on knowingly
# (metrics.serviceMonitor, metrics.prometheusRule need the Prometheus operator).
OPERATOR_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule"),
                  ("cert-manager.io/v1", "Certificate")}
NAMESPACE = "kube-system"
SIDECAR_REGISTRY = "registry.k8s.io/sig-storage/"
CUSTOM_KINDS = {
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"),
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshot"),
    ("groupsnapshot.storage.k8s.io/v1", "VolumeGroupSnapshotClass"),
    ("groupsnapshot.storage.k8s.io/v1", "VolumeGroupSnapshot"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cbt.storage.k8s.io/v1beta1", "SnapshotMetadataService"),
    ("cert-manager.io/v1", "Certificate"),
}
SECRET_VALUE = "s3cr3t-token-value-for-tests"
STATE_DIR = "/var/lib/multicsi"


# The metric families the driver exports, from README's metrics table (a unit
# test in src/metrics.rs keeps that table equal to what the driver exports):
# dashboards and alerts may only query these.
def documented_metrics():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    table = readme.split("| metric | type | labels | meaning |")[1].splitlines()[2:]
    names = set()
    for line in table:
        if not line.startswith("|"):
            break
        names |= {n.strip().strip("`") for n in line.split("|")[1].split(",")}
    return names


DRIVER_METRICS = documented_metrics()


class CheckFailed(Exception):
    pass


def ensure(cond, msg):
    if not cond:
        raise CheckFailed(msg)


class Runner:
    def __init__(self, helm, chart, examples, versions, verbose, promtool=None):
        self.crds = load_chart_crds(chart)
        self.helm = helm
        self.promtool = promtool
        self.chart = chart
        self.examples = examples
        self.versions = versions
        self.verbose = verbose
        self.passed = 0
        self.failed = 0
        self.failures = []
        self._validated = {}
        self.crd_schemas = {}

    # ------------------------------------------------------------- plumbing
    def check(self, name, fn, *args):
        try:
            fn(*args)
        except CheckFailed as e:
            self.failed += 1
            self.failures.append(f"{name}: {e}")
            print(f"FAIL {name}: {e}")
            return False
        except Exception as e:  # a crash in a check is a failure, with its trace
            self.failed += 1
            self.failures.append(f"{name}: {type(e).__name__}: {e}")
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            traceback.print_exc()
            return False
        self.passed += 1
        if self.verbose:
            print(f"ok   {name}")
        return True

    def run_helm(self, *args):
        return subprocess.run([self.helm, *args], capture_output=True, text=True, timeout=120)

    def api_versions(self, cluster):
        """The custom API versions `helm install` sees in a cluster state:
        "fresh" (the chart's crds/ are installed first), "crds-present" (the
        CRDs came from elsewhere, installed with --skip-crds) or "no-crds"
        (--skip-crds on a cluster without them)."""
        if cluster == "no-crds":
            return []
        return [f"{group_version}/{kind}" for group_version, kind in sorted(self.crds)]

    def template(self, values_files=(), sets=(), set_json=(), release=RELEASE, extra=(), cluster="fresh"):
        args = ["template", release, self.chart, "--namespace", NAMESPACE, *extra]
        if "--kube-version" not in extra:
            args += ["--kube-version", self.versions[0]]
        for api in self.api_versions(cluster):
            args += ["--api-versions", api]
        for f in values_files:
            args += ["-f", f]
        for s in sets:
            args += ["--set", s]
        for s in set_json:
            args += ["--set-json", s]
        return self.run_helm(*args)

    # ------------------------------------------------------------- validation
    def validate_core(self, docs, version):
        """Strict OpenAPI validation of every object that has a Kubernetes schema."""
        problems = []
        for d in docs:
            key = (version, json.dumps(d, sort_keys=True))
            if key in self._validated:
                err = self._validated[key]
            else:
                err = None
                if (d.get("apiVersion"), d.get("kind")) not in CUSTOM_KINDS:
                    try:
                        kubernetes_validate.validate(d, version, strict=True)
                    except kubernetes_validate.SchemaNotFoundError:
                        err = f"no schema for {d.get('apiVersion')} {d.get('kind')} in Kubernetes {version} and not a known custom resource"
                    except kubernetes_validate.ValidationError as e:
                        err = f"{e.message} at {'/'.join(str(p) for p in e.path)}"
                self._validated[key] = err
            if err:
                problems.append(f"{d.get('kind')}/{d.get('metadata', {}).get('name')}: {err}")
        ensure(not problems, "; ".join(problems[:5]))

    def validate_custom(self, docs):
        """Custom resources: against the chart's CRD schemas, or structurally."""
        services = [d for d in docs if d["kind"] == "Service"]
        for d in docs:
            kind = (d.get("apiVersion"), d.get("kind"))
            if kind[1] in ("VolumeSnapshotClass", "VolumeSnapshot") and kind[0] == "snapshot.storage.k8s.io/v1":
                self.validate_against_crd(d)
            elif kind[0] == "groupsnapshot.storage.k8s.io/v1":
                self.validate_against_crd(d)
            elif kind == ("cbt.storage.k8s.io/v1beta1", "SnapshotMetadataService"):
                self.validate_against_crd(d)
            elif kind == ("cert-manager.io/v1", "Certificate"):
                validate_certificate(d, services)
            elif kind == ("monitoring.coreos.com/v1", "ServiceMonitor"):
                validate_service_monitor(d, services)
            elif kind == ("monitoring.coreos.com/v1", "PrometheusRule"):
                validate_prometheus_rule(d)
                self.promtool_check_rules(d["spec"])

    def promtool_check_rules(self, spec):
        """Prometheus' own checker on rule groups: PromQL syntax, names, durations."""
        ensure(self.promtool, "promtool not found: it checks the alert expressions (apt-get install prometheus)")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(spec, f)
            f.flush()
            res = subprocess.run([self.promtool, "check", "rules", f.name], capture_output=True, text=True, timeout=60)
        ensure(res.returncode == 0, f"promtool check rules: {(res.stdout + res.stderr).strip()[-400:]}")

    def validate_against_crd(self, obj):
        schema = self.crd_schemas.get(obj["kind"])
        ensure(schema is not None, f"no CRD schema captured for {obj['kind']}")
        try:
            jsonschema.Draft4Validator(strictify(schema)).validate(obj)
        except jsonschema.ValidationError as e:
            raise CheckFailed(f"{obj['kind']}/{obj['metadata']['name']}: {e.message} at {'/'.join(map(str, e.path))}")

    def capture_crd_schemas(self):
        for (group_version, kind), crd in self.crds.items():
            version = next(v for v in crd["spec"]["versions"] if group_version.endswith("/" + v["name"]))
            self.crd_schemas[kind] = version["schema"]["openAPIV3Schema"]
        ensure(set(self.crd_schemas) == {"VolumeSnapshot", "VolumeSnapshotContent", "VolumeSnapshotClass",
                                         "VolumeGroupSnapshot", "VolumeGroupSnapshotContent",
                                         "VolumeGroupSnapshotClass", "SnapshotMetadataService"},
               f"CRDs in crds/: {sorted(self.crd_schemas)}")

    def is_builtin(self, doc, version):
        """Kubernetes `version` serves this kind without any CRD."""
        try:
            kubernetes_validate.validate(doc, version, strict=False)
        except kubernetes_validate.SchemaNotFoundError:
            return False
        except kubernetes_validate.ValidationError:
            return True
        return True

    def check_install_order(self, docs, version):
        """Every object can be created when Helm applies the templates."""
        problems = []
        for d in docs:
            kind = (d.get("apiVersion"), d.get("kind"))
            name = f"{kind[1]}/{d.get('metadata', {}).get('name')}"
            if kind == ("apiextensions.k8s.io/v1", "CustomResourceDefinition"):
                problems.append(f"{name} is a template: Helm creates it in the same step as the objects of its "
                                "kind, which fail on a fresh cluster; CRDs belong in crds/")
            elif kind in self.crds or kind in OPERATOR_KINDS:
                continue
            elif not self.is_builtin(d, version):
                problems.append(f"{name}: {kind[0]} is not built into Kubernetes {version} and no CRD of crds/ defines it")
        ensure(not problems, "; ".join(problems[:4]))

    # ------------------------------------------------------------- scenarios
    def scenario(self, name, values_files=(), sets=(), set_json=(), asserts=(), release=RELEASE, cluster="fresh"):
        """Render once; check it renders, validates and satisfies the assertions."""
        res = self.template(values_files, sets, set_json, release=release, cluster=cluster)
        docs = []

        def renders():
            ensure(res.returncode == 0, f"helm template failed: {res.stderr.strip()[:400]}")
            docs.extend(d for d in yaml.safe_load_all(res.stdout) if d)
            ensure(docs, "nothing rendered")
        if not self.check(f"[{name}] renders", renders):
            return None
        for v in self.versions:
            self.check(f"[{name}] valid against Kubernetes {v} (strict)", self.validate_core, docs, v)
            self.check(f"[{name}] installs in order on Kubernetes {v}: every kind built in or from crds/",
                       self.check_install_order, docs, v)
        self.check(f"[{name}] custom resources valid", self.validate_custom, docs)
        self.check(f"[{name}] one owner per state directory, never two on a host", state_dir_single_owner, docs)
        self.check(f"[{name}] sidecars: released versions, documented flags only", sidecar_flags, docs)
        self.check(f"[{name}] every sidecar's ServiceAccount holds its RBAC", sidecar_rbac, docs)
        self.check(f"[{name}] workload selectors match their pod labels", check_selectors, docs)
        self.check(f"[{name}] no secret value in args or plain env", check_no_secret_leak, docs)
        for a in asserts:
            label = a.__doc__.strip().splitlines()[0] if a.__doc__ else a.__name__
            self.check(f"[{name}] {label}", a, docs)
        return docs

    def must_fail(self, name, reason_pattern, values_files=(), sets=(), set_json=(), extra=()):
        def fails():
            res = self.template(values_files, sets, set_json, extra=extra)
            ensure(res.returncode != 0, "rendered although the values are invalid")
            ensure(re.search(reason_pattern, res.stderr, re.I | re.S),
                   f"failed, but not for the expected reason /{reason_pattern}/: {res.stderr.strip()[:300]}")
        self.check(f"[reject] {name}", fails)


# ================================================================= helpers
def strictify(schema):
    """Copy of an OpenAPI object schema where objects with declared properties
    reject unknown fields (what kubectl's strict field validation does)."""
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for k, v in node.items():
                if k == "metadata" and isinstance(v, dict) and v.get("type") == "object" and "properties" not in v:
                    continue
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(s)
    return s


def load_chart_crds(chart):
    """The CRDs of the chart's crds/ directory, by (group/version, kind) served."""
    crds = {}
    for path in sorted(glob.glob(os.path.join(chart, "crds", "*.yaml"))):
        with open(path) as f:
            for d in yaml.safe_load_all(f):
                if d and d.get("kind") == "CustomResourceDefinition":
                    for v in d["spec"]["versions"]:
                        if v.get("served"):
                            crds[(f"{d['spec']['group']}/{v['name']}", d["spec"]["names"]["kind"])] = d
    return crds


def workloads(docs):
    return [d for d in docs if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet")]


def driver_mode(workload):
    """The CSI services the workload's driver container serves (controller, node, all), or None."""
    c = containers(workload).get("multicsi")
    if not c:
        return None
    modes = [a.split("=", 1)[1] for a in c.get("args", []) if a.startswith("--mode=")]
    return modes[0] if modes else "all"


def node_selector(workload):
    return workload["spec"]["template"]["spec"].get("nodeSelector", {})


def never_on_one_node(a, b):
    """Two workloads' node selectors exclude each other: one label key, two values."""
    sa, sb = node_selector(a), node_selector(b)
    return any(k in sb and sb[k] != v for k, v in sa.items())


def state_dir_single_owner(docs):
    """The host's state directory: on any host at most one workload mounts it, a
    DaemonSet that never runs two pods on one host (RollingUpdate with maxSurge 0,
    or OnDelete); several DaemonSets only where their node selectors exclude each other."""
    owners = {}
    for w in workloads(docs):
        for path in host_paths(w):
            if path.rstrip("/") == STATE_DIR:
                owners.setdefault(path, []).append(w)
    for path, ws in owners.items():
        names = [f"{w['kind']}/{w['metadata']['name']}" for w in ws]
        for i, a in enumerate(ws):
            for b in ws[i + 1:]:
                ensure(never_on_one_node(a, b), f"{path} is mounted by {', '.join(names)}, whose node selectors "
                       "can pick one host: two processes would own one state directory")
        for w, name in zip(ws, names):
            ensure(w["kind"] == "DaemonSet", f"{name} mounts {path}: only a DaemonSet has one pod per host")
            strategy = w["spec"].get("updateStrategy", {"type": "RollingUpdate"})
            if strategy.get("type", "RollingUpdate") == "RollingUpdate":
                surge = str(strategy.get("rollingUpdate", {}).get("maxSurge", 0))
                ensure(surge in ("0", "0%"), f"{name} surges {surge}: a new pod would start next to the old one")


def hostpath_controller_on_host(docs):
    """hostpath: no controller Deployment; the DaemonSet pod serves controller and node
    (--mode=all), privileged, with the host's /dev and the kubelet dir Bidirectional"""
    serving = [w for w in workloads(docs) if driver_mode(w) in ("controller", "all")]
    ensure(len(serving) == 1, f"{len(serving)} workloads serve the controller")
    w = serving[0]
    ensure(w["kind"] == "DaemonSet" and driver_mode(w) == "all",
           f"{w['kind']}/{w['metadata']['name']} serves the controller (--mode={driver_mode(w)}) away from the node plugin")
    ensure(not [d for d in workloads(docs) if driver_mode(d) == "node"], "a second workload serves the node")
    c = containers(w)["multicsi"]
    ensure(c.get("securityContext", {}).get("privileged") is True, "the controller is not privileged (loop devices, freeze)")
    ensure(mount_for_host_path(w, "multicsi", "/dev")["mountPath"] == "/dev", "the controller has not the host's /dev")
    kubelet = mount_for_host_path(w, "multicsi", "/var/lib/kubelet")
    ensure(kubelet.get("mountPropagation") == "Bidirectional", "the controller does not see the node's mounts")
    ensure(mount_for_host_path(w, "multicsi", STATE_DIR)["mountPath"] == STATE_DIR, "state dir")


# Flags each sidecar release documents (README / --help of the versions below).
SIDECAR_FLAGS = {
    "csi-provisioner": {"--csi-address", "--v", "--timeout", "--default-fstype", "--extra-create-metadata",
                        "--leader-election", "--leader-election-namespace", "--node-deployment", "--strict-topology",
                        "--immediate-topology", "--enable-capacity", "--capacity-ownerref-level", "--worker-threads",
                        "--http-endpoint", "--feature-gates"},
    "csi-attacher": {"--csi-address", "--v", "--timeout", "--leader-election", "--leader-election-namespace",
                     "--worker-threads", "--http-endpoint"},
    "csi-resizer": {"--csi-address", "--v", "--timeout", "--leader-election", "--leader-election-namespace",
                    "--workers", "--http-endpoint"},
    "csi-snapshotter": {"--csi-address", "--v", "--timeout", "--extra-create-metadata", "--leader-election",
                        "--leader-election-namespace", "--node-deployment", "--worker-threads", "--http-endpoint",
                        "--feature-gates"},
    "liveness-probe": {"--csi-address", "--http-endpoint", "--v", "--probe-timeout"},
    "node-driver-registrar": {"--csi-address", "--kubelet-registration-path", "--http-endpoint", "--v"},
    "snapshot-controller": {"--v", "--leader-election", "--leader-election-namespace",
                            "--enable-distributed-snapshotting", "--http-endpoint", "--feature-gates"},
    "csi-snapshot-metadata": {"--csi-address", "--port", "--tls-cert", "--tls-key", "--max-streaming-duration-min",
                              "--timeout", "--http-endpoint", "--metrics-path", "--kube-api-qps", "--kube-api-burst",
                              "--v"},
}
# Releases at least as new as the reference hostpath driver v1.18 deploys; they
# need Kubernetes 1.34 (csi-provisioner v6: storage/v1 VolumeAttributesClass).
SIDECAR_MIN_VERSIONS = {"csi-provisioner": (6, 3, 0), "csi-attacher": (4, 12, 0), "csi-resizer": (2, 2, 1),
                        "csi-snapshotter": (8, 6, 0), "snapshot-controller": (8, 6, 0),
                        "node-driver-registrar": (2, 17, 0), "liveness-probe": (2, 19, 0),
                        "csi-snapshot-metadata": (1, 0, 0)}


def sidecar_flags(docs):
    for w in workloads(docs):
        for name, c in containers(w).items():
            if name not in SIDECAR_FLAGS:
                continue
            tag = c["image"].rsplit(":", 1)[-1]
            m = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", tag)
            if c["image"].startswith(SIDECAR_REGISTRY) and m:
                ensure(tuple(map(int, m.groups())) >= SIDECAR_MIN_VERSIONS[name], f"{name} {tag} is older than "
                       + "v" + ".".join(map(str, SIDECAR_MIN_VERSIONS[name])))
            args = [a for a in c.get("args", []) if not a.startswith("--extra-flag-")]
            for a in args:
                flag = a.split("=", 1)[0]
                ensure(flag in SIDECAR_FLAGS[name], f"{name}: {flag} is not a documented flag of its release")
                ensure(not a.startswith("--feature-gates=Topology"), f"{name}: {a} is a GA gate, removed")
            env = env_of(c)
            if "--node-deployment" in args:
                ensure("--leader-election" not in args, f"{name}: --node-deployment with leader election")
                ensure(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
                       f"{name}: --node-deployment needs NODE_NAME from spec.nodeName")
            if "--enable-capacity" in args:
                for var, field in (("POD_NAME", "metadata.name"), ("NAMESPACE", "metadata.namespace")):
                    ensure(env.get(var, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == field,
                           f"{name}: --enable-capacity needs {var} from {field}")
            if any(a.startswith("--leader-election-namespace=$(NAMESPACE)") for a in args):
                ensure("NAMESPACE" in env, f"{name}: leader election namespace from an unset NAMESPACE")


# What each sidecar must be allowed to do (a subset of its documented RBAC).
SIDECAR_RULES = {
    "csi-provisioner": [("", "persistentvolumes", "create"), ("", "persistentvolumes", "delete"),
                        ("", "persistentvolumeclaims", "watch"), ("storage.k8s.io", "storageclasses", "watch"),
                        ("storage.k8s.io", "csinodes", "watch"), ("", "nodes", "watch"),
                        ("storage.k8s.io", "volumeattributesclasses", "watch"),
                        ("snapshot.storage.k8s.io", "volumesnapshots", "update"), ("", "events", "create")],
    "csi-attacher": [("storage.k8s.io", "volumeattachments", "patch"), ("storage.k8s.io", "volumeattachments/status", "patch"),
                     ("", "persistentvolumes", "patch"), ("storage.k8s.io", "csinodes", "watch")],
    "csi-resizer": [("", "persistentvolumeclaims/status", "patch"), ("", "persistentvolumes", "patch"),
                    ("storage.k8s.io", "volumeattributesclasses", "watch"), ("", "events", "create")],
    "csi-snapshot-metadata": [("cbt.storage.k8s.io", "snapshotmetadataservices", "get"),
                              ("authentication.k8s.io", "tokenreviews", "create"),
                              ("authorization.k8s.io", "subjectaccessreviews", "create"),
                              ("snapshot.storage.k8s.io", "volumesnapshots", "get"),
                              ("snapshot.storage.k8s.io", "volumesnapshotcontents", "get")],
    "csi-snapshotter": [("snapshot.storage.k8s.io", "volumesnapshotcontents", "update"),
                        ("snapshot.storage.k8s.io", "volumesnapshotcontents/status", "patch"),
                        ("snapshot.storage.k8s.io", "volumesnapshotclasses", "watch"), ("", "events", "create")],
}


# The feature gate of volume group snapshots, and what it needs allowed.
GROUP_GATE = "--feature-gates=CSIVolumeGroupSnapshot=true"
GROUP_RULES = {
    "csi-snapshotter": [("groupsnapshot.storage.k8s.io", "volumegroupsnapshotclasses", "watch"),
                        ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents", "update"),
                        ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents/status", "patch"),
                        ("snapshot.storage.k8s.io", "volumesnapshotcontents", "create")],
    "snapshot-controller": [("groupsnapshot.storage.k8s.io", "volumegroupsnapshotclasses", "watch"),
                            ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents", "create"),
                            ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents/status", "patch"),
                            ("groupsnapshot.storage.k8s.io", "volumegroupsnapshots", "update"),
                            ("groupsnapshot.storage.k8s.io", "volumegroupsnapshots/status", "patch")],
}


def granted(docs, sa, namespaced):
    """(apiGroup, resource, verb) the ServiceAccount `sa` may use, cluster-wide or in NAMESPACE."""
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("ClusterRole", "Role")}
    out = set()
    for b in docs:
        if b["kind"] not in ("ClusterRoleBinding", "RoleBinding") or (b["kind"] == "RoleBinding") != namespaced:
            continue
        if not any(s.get("kind") == "ServiceAccount" and s["name"] == sa and s.get("namespace") == NAMESPACE
                   for s in b["subjects"]):
            continue
        role = roles.get((b["roleRef"]["kind"], b["roleRef"]["name"]))
        for r in (role or {}).get("rules", []):
            for g in r["apiGroups"]:
                for res in r["resources"]:
                    for v in r["verbs"]:
                        out.add((g, res, v))
    return out


def sidecar_rbac(docs):
    for w in workloads(docs):
        sa = w["spec"]["template"]["spec"].get("serviceAccountName", "default")
        cluster, local = granted(docs, sa, False), granted(docs, sa, True)
        for name, c in containers(w).items():
            for rule in SIDECAR_RULES.get(name, []):
                ensure(rule in cluster, f"{w['kind']}/{w['metadata']['name']} {name} (ServiceAccount {sa}) lacks {rule}")
            args = c.get("args", [])
            if "--leader-election" in args or "--leader-election=true" in args:
                ensure(("coordination.k8s.io", "leases", "update") in local, f"{name} ({sa}) cannot hold its lease")
            if "--enable-capacity" in args:
                for rule in (("storage.k8s.io", "csistoragecapacities", "create"), ("storage.k8s.io", "csistoragecapacities", "delete"),
                             ("", "pods", "get")):
                    ensure(rule in local, f"{name} ({sa}) lacks {rule} for capacity tracking")
            if "--enable-distributed-snapshotting=true" in args:
                ensure(("", "nodes", "watch") in cluster, f"{name} ({sa}) cannot watch nodes")
            if GROUP_GATE in args:
                for rule in GROUP_RULES[name]:
                    ensure(rule in cluster, f"{name} ({sa}) lacks {rule} for group snapshots")


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, name_suffix=None):
    found = [d for d in by_kind(docs, kind) if name_suffix is None or d["metadata"]["name"].endswith(name_suffix)]
    ensure(len(found) == 1, f"expected one {kind}{' *' + name_suffix if name_suffix else ''}, found {len(found)}")
    return found[0]


def get_controller(docs):
    """The workload whose driver serves the controller: a Deployment, or for hostpath the DaemonSet."""
    found = [w for w in workloads(docs) if driver_mode(w) in ("controller", "all")]
    ensure(len(found) == 1, f"expected one workload serving the controller, found {len(found)}")
    return found[0]


def get_node(docs):
    return one(docs, "DaemonSet")


def containers(workload):
    return {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def mounts_of(container):
    return {m["name"]: m for m in container.get("volumeMounts", [])}


def volumes_of(workload):
    return {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}


def host_paths(workload):
    return {v["hostPath"]["path"]: v["name"] for v in volumes_of(workload).values() if "hostPath" in v}


def mount_for_host_path(workload, container_name, path):
    name = host_paths(workload).get(path)
    ensure(name, f"no hostPath volume for {path}")
    m = mounts_of(containers(workload)[container_name]).get(name)
    ensure(m, f"{container_name} does not mount {path}")
    return m


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def validate_service_monitor(sm, services):
    spec = sm["spec"]
    ensure(set(spec) <= {"jobLabel", "namespaceSelector", "selector", "endpoints"}, f"unexpected fields {sorted(spec)}")
    sel = spec["selector"]["matchLabels"]
    targets = [s for s in services if labels_match(sel, s["metadata"].get("labels", {}))]
    metrics = [s for s in services if s["metadata"].get("labels", {}).get("multicsi.io/metrics") == "true"]
    ensure(targets and len(targets) == len(metrics),
           f"ServiceMonitor selects {len(targets)} Services, expected every metrics Service ({len(metrics)})")
    ensure(NAMESPACE in spec["namespaceSelector"]["matchNames"], "namespaceSelector misses the release namespace")
    for ep in spec["endpoints"]:
        ensure(set(ep) <= {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"},
               f"unexpected endpoint fields {sorted(ep)}")
        ensure(re.fullmatch(r"[0-9]+(ms|s|m|h)", ep["interval"]), f"bad interval {ep['interval']}")
        for s in targets:
            ensure(ep["port"] in {p["name"] for p in s["spec"]["ports"]},
                   f"port {ep['port']} not on Service {s['metadata']['name']}")
        for r in ep.get("relabelings", []):
            ensure(set(r) <= {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"},
                   f"bad relabeling {r}")


def validate_certificate(cert, services):
    """A cert-manager Certificate: its fields, names of a rendered Service, an issuer."""
    spec = cert["spec"]
    ensure(set(spec) <= {"secretName", "duration", "renewBefore", "commonName", "dnsNames", "usages", "issuerRef"},
           f"unexpected Certificate fields {sorted(spec)}")
    ensure(spec.get("secretName") and spec.get("dnsNames"), "Certificate without secretName or dnsNames")
    ensure(re.fullmatch(r"([0-9]+(\.[0-9]+)?(h|m|s))+", spec["duration"]), f"bad duration {spec['duration']}")
    names = {s["metadata"]["name"] for s in services}
    ensure(spec["dnsNames"][0] in names, f"Certificate {spec['dnsNames']} names no rendered Service")
    ensure(spec["issuerRef"].get("name") and spec["issuerRef"].get("kind") in ("Issuer", "ClusterIssuer"),
           f"bad issuerRef {spec['issuerRef']}")


def queried_metrics(expr):
    """The driver's metric families an expression reads (histogram series folded)."""
    names = set(re.findall(r"\b((?:multicsi|process)_[a-z_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n) in DRIVER_METRICS else n
            for n in names}


def validate_prometheus_rule(rule):
    spec = rule["spec"]
    ensure(set(spec) == {"groups"}, f"unexpected fields {sorted(spec)}")
    for group in spec["groups"]:
        ensure(set(group) <= {"name", "interval", "rules"} and group.get("name"), f"bad group {sorted(group)}")
        for r in group["rules"]:
            ensure(set(r) <= {"alert", "record", "expr", "for", "labels", "annotations"}, f"bad rule fields {sorted(r)}")
            ensure(isinstance(r["expr"], str) and r["expr"].strip(), f"rule {r.get('alert')} without expr")
            unknown = queried_metrics(r["expr"]) - DRIVER_METRICS
            ensure(not unknown, f"{r.get('alert')} queries metrics the driver does not export: {sorted(unknown)}")
            ensure(re.fullmatch(r"[0-9]+(ms|s|m|h)", r.get("for", "0s")), f"bad for: {r.get('for')}")


def check_selectors(docs):
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet"):
            sel = d["spec"]["selector"]["matchLabels"]
            ensure(labels_match(sel, d["spec"]["template"]["metadata"]["labels"]),
                   f"{d['kind']}/{d['metadata']['name']} selector does not match its pods")
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in docs if d["kind"] in ("Deployment", "DaemonSet")]
    for s in by_kind(docs, "Service"):
        ensure(any(labels_match(s["spec"]["selector"], p) for p in pods),
               f"Service/{s['metadata']['name']} selects no pod of the chart")
    for p in by_kind(docs, "PodDisruptionBudget"):
        ensure(any(labels_match(p["spec"]["selector"]["matchLabels"], l) for l in pods),
               f"PodDisruptionBudget/{p['metadata']['name']} selects no pod of the chart")


def check_no_secret_leak(docs):
    for d in docs:
        if d["kind"] not in ("Deployment", "DaemonSet"):
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            for a in c.get("args", []) + c.get("command", []):
                ensure(SECRET_VALUE not in a, f"{c['name']} has the secret in its args")
                ensure(not re.search(r"(token|api-key|apikey)=", a, re.I), f"{c['name']} passes a credential flag: {a}")
            for e in c.get("env", []):
                if re.search(r"TOKEN|API_KEY", e["name"]):
                    ensure("value" not in e, f"{c['name']} env {e['name']} is a plain value, not a secretKeyRef")
                ensure(e.get("value") != SECRET_VALUE, f"{c['name']} env {e['name']} holds the secret")


# ================================================================= assertions
def csidriver(capacity):
    def a(docs):
        d = one(docs, "CSIDriver")
        ensure(d["metadata"]["name"] == "multicsi.io", d["metadata"]["name"])
        ensure(d["spec"] == {"attachRequired": True, "podInfoOnMount": False, "fsGroupPolicy": "File",
                             "storageCapacity": capacity, "volumeLifecycleModes": ["Persistent"]}, str(d["spec"]))
    a.__doc__ = f"CSIDriver: attachRequired, no pod info, fsGroupPolicy File, Persistent only, storageCapacity {capacity}"
    return a


def capacity_tracking(on):
    def a(docs):
        prov = containers(get_controller(docs))["csi-provisioner"]
        args = prov["args"]
        if not on:
            ensure("--enable-capacity" not in args, "capacity published for a backend without per-node capacity")
            return
        ensure("--enable-capacity" in args, f"provisioner args {args}")
        level = [a for a in args if a.startswith("--capacity-ownerref-level=")]
        ensure(level == ["--capacity-ownerref-level=1"], f"owner of CSIStorageCapacity objects: {level} (DaemonSet is level 1)")
    a.__doc__ = f"capacity tracking {'on: CSIStorageCapacity per node, owned by the DaemonSet' if on else 'off'}"
    return a


def kubelet_dir_env(path):
    def a(docs):
        serving = [w for w in workloads(docs) if driver_mode(w) in ("node", "all")]
        ensure(serving, "no workload serves the node")
        for w in serving:
            env = env_of(containers(w)["multicsi"])
            ensure(env.get("MULTICSI_KUBELET_DIR", {}).get("value") == path,
                   f"{w['kind']}/{w['metadata']['name']} MULTICSI_KUBELET_DIR={env.get('MULTICSI_KUBELET_DIR')}, want {path}")
        for w in workloads(docs):
            if driver_mode(w) == "controller":
                ensure("MULTICSI_KUBELET_DIR" not in env_of(containers(w)["multicsi"]), "controller gets a kubelet dir")
    a.__doc__ = f"every pod serving the node confines node paths to {path} (MULTICSI_KUBELET_DIR)"
    return a


def helm_test_hook(storage_class):
    def a(docs):
        hooks = [d for d in docs if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
        pvc = [d for d in hooks if d["kind"] == "PersistentVolumeClaim"]
        pod = [d for d in hooks if d["kind"] == "Pod"]
        ensure(len(pvc) == 1 and len(pod) == 1, f"test hooks: {[(d['kind'], d['metadata']['name']) for d in hooks]}")
        pvc, pod = pvc[0], pod[0]
        ensure(pvc["spec"]["storageClassName"] == storage_class, f"test claim class {pvc['spec'].get('storageClassName')}")
        weight = lambda d: int(d["metadata"]["annotations"].get("helm.sh/hook-weight", "0"))
        ensure(weight(pvc) < weight(pod), "the claim must exist before the pod")
        for d in (pvc, pod):
            policy = d["metadata"]["annotations"].get("helm.sh/hook-delete-policy", "").split(",")
            ensure({"before-hook-creation", "hook-succeeded"} <= set(policy), f"{d['kind']} delete policy {policy}")
        spec = pod["spec"]
        ensure(spec["restartPolicy"] == "Never", "a test pod must end")
        ensure(spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"], "pod uses the claim")
        c = spec["containers"][0]
        script = " ".join(c.get("command", []) + c.get("args", []))
        mount = c["volumeMounts"][0]["mountPath"]
        ensure(re.search(rf"> *{re.escape(mount)}/", script) and re.search(rf"cat {re.escape(mount)}/", script),
               "the pod does not write and read back a file on the volume")
        ensure(c["image"] == containers(get_controller(docs))["multicsi"]["image"], "test image is not the driver image")
    a.__doc__ = f"helm test hook: claim of {storage_class}, pod writes and reads it back, both cleaned up"
    return a


def hostpath_shape(docs):
    """hostpath DaemonSet: driver --mode=all, registrar, livenessprobe and the controller sidecars
    (provisioner and snapshotter per node, attacher and resizer with leader election)"""
    ensure(not by_kind(docs, "Deployment") or all(
        d["metadata"]["name"].endswith("-snapshot-controller") for d in by_kind(docs, "Deployment")),
        "a controller Deployment is rendered for hostpath")
    ds = get_node(docs)
    cs = containers(ds)
    want = {"multicsi", "node-driver-registrar", "liveness-probe", "csi-provisioner", "csi-attacher", "csi-resizer",
            "csi-snapshotter"}
    ensure(set(cs) == want, f"containers {sorted(cs)}, want {sorted(want)}")
    ensure("--node-deployment" in cs["csi-provisioner"]["args"], "provisioner not per node")
    ensure("--node-deployment" in cs["csi-snapshotter"]["args"], "snapshotter not per node")
    for n in ("csi-attacher", "csi-resizer"):
        ensure("--leader-election" in cs[n]["args"], f"{n} without leader election")
    for d in by_kind(docs, "Deployment"):
        if d["metadata"]["name"].endswith("-snapshot-controller"):
            ensure("--enable-distributed-snapshotting=true" in containers(d)["snapshot-controller"]["args"],
                   "the snapshot controller does not assign snapshots to the node-deployment csi-snapshotter")
    ensure(not by_kind(docs, "PodDisruptionBudget") or all(
        p["metadata"]["name"].endswith("-snapshot-controller") for p in by_kind(docs, "PodDisruptionBudget")),
        "controller PodDisruptionBudget without a controller Deployment")


def a_csidriver(docs):
    """CSIDriver: attachRequired, no pod info, fsGroupPolicy File, Persistent only, capacity for hostpath"""
    csidriver(True)(docs)


def controller_shape(snapshots):
    def a(docs):
        ctrl = get_controller(docs)
        cs = containers(ctrl)
        want = {"multicsi", "csi-provisioner", "csi-attacher", "csi-resizer", "liveness-probe"}
        if snapshots:
            want.add("csi-snapshotter")
        ensure(set(cs) == want, f"containers {sorted(cs)}, want {sorted(want)}")
        args = cs["multicsi"]["args"]
        ensure(args[:4] == ["serve", "--mode=controller", "--endpoint=unix:///csi/csi.sock", "--node-id=$(NODE_NAME)"],
               f"driver args {args}")
        for name, c in cs.items():
            ensure(c.get("resources", {}).get("requests"), f"{name} has no resource requests")
            if name.startswith("csi-"):
                ensure("--leader-election" in c["args"], f"{name} without leader election")
                ensure("--leader-election-namespace=$(NAMESPACE)" in c["args"], f"{name} leader election namespace")
                ensure(c["image"].startswith(SIDECAR_REGISTRY), f"{name} image {c['image']}")
                ensure(any(a.startswith("--timeout=") for a in c["args"]), f"{name} has no --timeout")
        p = cs["csi-provisioner"]["args"]
        for flag in ("--default-fstype=ext4", "--extra-create-metadata"):
            ensure(flag in p, f"provisioner misses {flag}")
        spec = ctrl["spec"]["template"]["spec"]
        ensure(ctrl["spec"]["replicas"] >= 1, "replicas")
        ensure(spec["priorityClassName"] == "system-cluster-critical", "controller priority class")
        ensure(spec["affinity"].get("podAntiAffinity", {}).get("preferredDuringSchedulingIgnoredDuringExecution"),
               "no soft anti-affinity")
        ensure(spec["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "ScheduleAnyway", "spread not soft")
        ensure(not spec.get("hostNetwork"), "controller on host network")
    a.__doc__ = f"controller runs driver + sidecars{' with' if snapshots else ' without'} csi-snapshotter, leader election on all"
    return a


def driver_env_multi(docs):
    """driver env on the controller and every node plugin: MULTICSI_* settings, node id from spec.nodeName"""
    for w in driver_workloads(docs):
        env = env_of(containers(w)["multicsi"])
        for k in ("MULTICSI_BACKEND", "MULTICSI_DRIVER_NAME", "MULTICSI_NODE_ID", "MULTICSI_STATE_DIR"):
            ensure(k in env, f"{w['metadata']['name']} misses {k}")


def driver_env(docs):
    """driver env: MULTICSI_* settings on controller and node, node id from spec.nodeName"""
    for w, mode in ((get_controller(docs), "controller"), (get_node(docs), "node")):
        env = env_of(containers(w)["multicsi"])
        for k in ("MULTICSI_BACKEND", "MULTICSI_DRIVER_NAME", "MULTICSI_NODE_ID", "MULTICSI_STATE_DIR",
                  "MULTICSI_LOG_FORMAT", "MULTICSI_LOG_LEVEL", "MULTICSI_METRICS_ADDRESS"):
            ensure(k in env, f"{mode} misses {k}")
        ensure(env["MULTICSI_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName", "node id source")
        ensure(env["MULTICSI_LOG_FORMAT"]["value"] == "json", "log format")
        ensure(env["MULTICSI_METRICS_ADDRESS"]["value"] == "0.0.0.0:9820", "metrics address")
        ports = {p["name"]: p["containerPort"] for p in containers(w)["multicsi"]["ports"]}
        ensure(ports.get("metrics") == 9820, f"{mode} metrics port {ports}")
        ensure(containers(w)["multicsi"]["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness on /readyz")


def node_common(docs):
    """node DaemonSet: privileged driver, kubelet dir Bidirectional, /dev, /sys, udev, registrar, tolerate all"""
    ds = get_node(docs)
    spec = ds["spec"]["template"]["spec"]
    cs = containers(ds)
    ensure({"multicsi", "node-driver-registrar", "liveness-probe"} <= set(cs), f"containers {sorted(cs)}")
    ensure(cs["multicsi"]["securityContext"]["privileged"] is True, "driver not privileged")
    ensure(not spec.get("hostPID"), "hostPID must be off")
    args = cs["multicsi"]["args"]
    ensure(args[0] == "serve" and args[1] in ("--mode=node", "--mode=all") and args[2] == "--endpoint=unix:///csi/csi.sock",
           f"args {args}")
    kubelet = mount_for_host_path(ds, "multicsi", "/var/lib/kubelet")
    ensure(kubelet["mountPath"] == "/var/lib/kubelet" and kubelet.get("mountPropagation") == "Bidirectional",
           f"kubelet dir mount {kubelet}")
    for p in ("/dev", "/sys", "/run/udev"):
        ensure(mount_for_host_path(ds, "multicsi", p)["mountPath"] == p, f"{p} mounted elsewhere")
    sock = mount_for_host_path(ds, "multicsi", "/var/lib/kubelet/plugins/multicsi.io")
    ensure(sock["mountPath"] == "/csi", "plugin dir")
    reg = cs["node-driver-registrar"]
    ensure("--kubelet-registration-path=/var/lib/kubelet/plugins/multicsi.io/csi.sock" in reg["args"], f"{reg['args']}")
    ensure(mount_for_host_path(ds, "node-driver-registrar", "/var/lib/kubelet/plugins_registry")["mountPath"]
           == "/registration", "registration dir")
    ensure({"operator": "Exists"} in spec["tolerations"], "does not tolerate every taint")
    ensure(spec["priorityClassName"] == "system-node-critical", "node priority class")
    for name, c in cs.items():
        ensure(c.get("resources", {}).get("requests"), f"{name} has no resource requests")
        if name in ("multicsi", "node-driver-registrar"):
            ensure(c.get("livenessProbe"), f"{name} has no liveness probe")
    ensure(env_of(cs["multicsi"]).keys().isdisjoint({"CLOUDSCALE_ACCESS_TOKEN", "CIVO_API_KEY", "PACKET_API_KEY"}),
           "node receives cloud credentials")


def node_packet(docs):
    """packet node: host network, /etc/iscsi, iscsi lock dir and multipath config from the host"""
    ds = get_node(docs)
    spec = ds["spec"]["template"]["spec"]
    ensure(spec.get("hostNetwork") is True, "hostNetwork not set")
    ensure(spec.get("dnsPolicy") == "ClusterFirstWithHostNet", "dnsPolicy for host network")
    for p in ("/etc/iscsi", "/run/lock/iscsi", "/etc/multipath", "/etc/multipath.conf"):
        ensure(mount_for_host_path(ds, "multicsi", p)["mountPath"] == p, f"{p} mounted elsewhere")


def civo_statsd(path):
    def check(docs):
        node = get_node(docs)
        ensure(volumes_of(node)["civostatsd"]["hostPath"] == {"path": path, "type": "File"},
               f"{volumes_of(node).get('civostatsd')}")
        m = mount_for_host_path(node, "multicsi", path)
        ensure(m["mountPath"] == "/etc/civostatsd" and m.get("readOnly") is True, f"{m}")
        ensure("/etc/civostatsd" not in host_paths(get_controller(docs)), "the controller mounts civostatsd")
    check.__doc__ = f"civo node: the host's {path} mounted read-only at /etc/civostatsd, where the driver reads it"
    return check


def no_civo_statsd(docs):
    """no civostatsd mount (another backend, or civo.statsdFile empty)"""
    ensure("civostatsd" not in volumes_of(get_node(docs)), "civostatsd mounted")


def node_not_host_network(docs):
    """node plugin stays off the host network and has no iSCSI mounts"""
    ds = get_node(docs)
    ensure(not ds["spec"]["template"]["spec"].get("hostNetwork"), "hostNetwork set")
    ensure("/etc/iscsi" not in host_paths(ds), "/etc/iscsi mounted without packet")


def packet_mounts_without_host_network(docs):
    """packet with node.hostNetwork=false: no host network, iSCSI mounts kept"""
    ds = get_node(docs)
    ensure(not ds["spec"]["template"]["spec"].get("hostNetwork"), "hostNetwork set")
    ensure("/etc/iscsi" in host_paths(ds), "/etc/iscsi not mounted")


def node_state_dir_only(docs):
    """cloud backend: the node keeps its format markers in the state dir, the controller has none"""
    ensure("/var/lib/multicsi" not in host_paths(get_controller(docs)), "the controller mounts the state dir")
    node = get_node(docs)
    ensure("/var/lib/multicsi" in host_paths(node), "the node does not mount the state dir")
    ensure(mount_for_host_path(node, "multicsi", "/var/lib/multicsi")["mountPath"] == "/var/lib/multicsi",
           "node state dir mount path")


def storage_classes(expected, default):
    def a(docs):
        scs = {d["metadata"]["name"]: d for d in by_kind(docs, "StorageClass")}
        ensure(set(scs) == set(expected), f"classes {sorted(scs)}, want {sorted(expected)}")
        defaults = [n for n, d in scs.items()
                    if d["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"]
        ensure(defaults == [default], f"default classes {defaults}")
        for n, d in scs.items():
            ensure(d["provisioner"] == "multicsi.io", f"{n} provisioner")
            ensure(d["volumeBindingMode"] == "WaitForFirstConsumer", f"{n} binding mode")
            ensure(d["allowVolumeExpansion"] is True, f"{n} expansion")
            ensure(d["parameters"]["csi.storage.k8s.io/fstype"] in ("ext4", "xfs"), f"{n} fstype")
            for k, v in expected[n].items():
                ensure(d["parameters"].get(k) == v, f"{n} parameter {k}={d['parameters'].get(k)!r}, want {v!r}")
            luks = d["parameters"].get("multicsi.io/luks-encrypted") == "true"
            if luks:
                ensure(d["parameters"]["csi.storage.k8s.io/node-stage-secret-name"] == "${pvc.name}-luks-key", n)
                ensure(d["parameters"]["csi.storage.k8s.io/node-stage-secret-namespace"] == "${pvc.namespace}", n)
                ensure(d["parameters"]["multicsi.io/luks-cipher"] == "aes-xts-plain64", n)
                ensure(d["parameters"]["multicsi.io/luks-key-size"] == "512", n)
    a.__doc__ = f"StorageClasses {', '.join(sorted(expected))} with {default} as the default"
    return a


def LUKS(extra=None):
    p = {"multicsi.io/luks-encrypted": "true"}
    p.update(extra or {})
    return p


def snapshot_api_absent(docs):
    """without the snapshot API: no VolumeSnapshotClass, csi-snapshotter or snapshot controller (install succeeds)"""
    ensure(not by_kind(docs, "VolumeSnapshotClass"), "VolumeSnapshotClass rendered without its CRD")
    ensure("csi-snapshotter" not in containers(get_controller(docs)), "csi-snapshotter without the snapshot API")
    ensure(not [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-snapshot-controller")],
           "snapshot controller without the snapshot API")


def snapshot_objects(present, ctrl=True):
    def a(docs):
        ctrl_docs = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-snapshot-controller")]
        vsc = by_kind(docs, "VolumeSnapshotClass")
        crd = by_kind(docs, "CustomResourceDefinition")
        snap_roles = [d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"].endswith("-snapshotter")]
        if not present:
            ensure(not (ctrl_docs or vsc or crd or snap_roles), "snapshot objects rendered for a backend without snapshots")
            return
        ensure(len(vsc) == 1, f"{len(vsc)} VolumeSnapshotClasses")
        ensure(vsc[0]["driver"] == "multicsi.io" and vsc[0]["deletionPolicy"] == "Delete", str(vsc[0]))
        ensure(len(snap_roles) == 1, "snapshotter ClusterRole")
        ensure(not crd, f"{len(crd)} CRDs rendered as templates (they belong in crds/)")
        ensure(len(ctrl_docs) == (1 if ctrl else 0), f"{len(ctrl_docs)} snapshot controllers")
        if ctrl:
            c = containers(ctrl_docs[0])["snapshot-controller"]
            ensure(c["image"].startswith(SIDECAR_REGISTRY + "snapshot-controller:v8."), c["image"])
            ensure("--leader-election=true" in c["args"], "snapshot-controller leader election")
    state = "present" if present else "absent"
    a.__doc__ = f"snapshot objects {state}" + ("" if not present else f" (controller {'on' if ctrl else 'off'})")
    return a


def group_snapshot_objects(driver_takes, api=True):
    """Group snapshots: the snapshot controller's gate wherever the API is served; the
    csi-snapshotter gate and the VolumeGroupSnapshotClass only where the driver takes them."""
    def a(docs):
        vgsc = by_kind(docs, "VolumeGroupSnapshotClass")
        snapshotters = [c for w in workloads(docs) for n, c in containers(w).items() if n == "csi-snapshotter"]
        ctrl = [c for w in workloads(docs) for n, c in containers(w).items() if n == "snapshot-controller"]
        for c in ctrl:
            ensure((GROUP_GATE in c["args"]) == api, f"snapshot-controller gate: {c['args']}")
        for c in snapshotters:
            ensure((GROUP_GATE in c["args"]) == driver_takes, f"csi-snapshotter gate: {c['args']}")
        if not driver_takes:
            ensure(not vgsc, "VolumeGroupSnapshotClass rendered for a driver without group snapshots")
            return
        ensure(snapshotters, "no csi-snapshotter")
        ensure(len(vgsc) == 1, f"{len(vgsc)} VolumeGroupSnapshotClasses")
        c = vgsc[0]
        ensure(c["driver"] == "multicsi.io" and c["deletionPolicy"] == "Delete", str(c))
        ensure(c["metadata"]["annotations"]["groupsnapshot.storage.kubernetes.io/is-default-class"] == "true",
               "default class annotation")
    a.__doc__ = (f"group snapshots {'taken' if driver_takes else 'not taken'} by the driver, "
                 f"API {'served' if api else 'absent'}")
    return a


def rbac_scoped(docs):
    """RBAC: one ServiceAccount per component, least privilege, leases only namespaced"""
    sas = {d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")}
    want = {w["spec"]["template"]["spec"]["serviceAccountName"] for w in workloads(docs)}
    ensure(want <= sas, f"service accounts {sorted(sas)}, pods use {sorted(want)}")
    for d in by_kind(docs, "ClusterRole"):
        for r in d["rules"]:
            ensure("*" not in r["verbs"] and "*" not in r["resources"], f"{d['metadata']['name']} uses wildcards")
            ensure("secrets" not in r["resources"], f"{d['metadata']['name']} reads secrets")
            ensure("leases" not in r["resources"], f"{d['metadata']['name']} grants leases cluster-wide")
    node_role = one(docs, "ClusterRole", "-node")
    ensure(node_role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}], "node role too wide")
    roles = {d["metadata"]["name"]: d for d in by_kind(docs, "ClusterRole")}
    for b in by_kind(docs, "ClusterRoleBinding"):
        ensure(b["roleRef"]["name"] in roles, f"binding to unknown role {b['roleRef']['name']}")
        for s in b["subjects"]:
            ensure(s["name"] in sas and s["namespace"] == NAMESPACE, f"binding subject {s}")
    prov = roles["multicsi-provisioner"]["rules"]
    ensure({"create", "delete"} <= set(next(r for r in prov if "persistentvolumes" in r["resources"])["verbs"]),
           "provisioner cannot create/delete PVs")
    att = roles["multicsi-attacher"]["rules"]
    ensure(any("volumeattachments/status" in r["resources"] and "patch" in r["verbs"] for r in att),
           "attacher cannot patch volumeattachments/status")
    res = roles["multicsi-resizer"]["rules"]
    ensure(any("persistentvolumeclaims/status" in r["resources"] and "patch" in r["verbs"] for r in res),
           "resizer cannot patch pvc status")
    leases = [d for d in by_kind(docs, "Role") if any("leases" in r["resources"] for r in d["rules"])]
    ensure(leases and all(d["metadata"]["namespace"] == NAMESPACE for d in leases), "lease Roles")
    ctrl_sa = get_controller(docs)["spec"]["template"]["spec"]["serviceAccountName"]
    ensure(any(s["name"] == ctrl_sa for b in by_kind(docs, "RoleBinding") for s in b["subjects"]),
           "controller SA cannot take leases")


def metrics_services(docs):
    """metrics Service per component that runs (hostpath: node only) on port 9820 named metrics"""
    svcs = {d["metadata"]["name"]: d for d in by_kind(docs, "Service")}
    want = {f"multicsi-{w['metadata']['labels']['app.kubernetes.io/component']}-metrics" for w in workloads(docs)
            if driver_mode(w)}
    ensure(set(svcs) == want, f"services {sorted(svcs)}, want {sorted(want)}")
    for s in svcs.values():
        ensure(s["spec"]["ports"] == [{"name": "metrics", "port": 9820, "targetPort": "metrics", "protocol": "TCP"}],
               str(s["spec"]["ports"]))
    if any(driver_mode(w) == "controller" for w in workloads(docs)):
        one(docs, "PodDisruptionBudget", "multicsi-controller")
    ensure(not by_kind(docs, "ServiceMonitor"), "ServiceMonitor rendered although off")


def observability_off(docs):
    """no Grafana dashboard and no PrometheusRule unless switched on"""
    ensure(not [c for c in by_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")],
           "dashboard ConfigMap rendered although off")
    ensure(not by_kind(docs, "PrometheusRule"), "PrometheusRule rendered although off")


def dashboard_on(namespace, promtool):
    def a(docs):
        cm = one(docs, "ConfigMap", "-dashboard")
        ensure(cm["metadata"]["name"] == "multicsi-dashboard", cm["metadata"]["name"])
        ensure(cm["metadata"]["namespace"] == namespace, f"namespace {cm['metadata']['namespace']}")
        ensure(cm["metadata"]["labels"].get("grafana_dashboard") == "1", "no grafana_dashboard label")
        board = json.loads(cm["data"]["multicsi.json"])
        ensure(board["uid"] == "multicsi" and board["title"], "dashboard uid/title")
        variables = {v["name"] for v in board["templating"]["list"]}
        ensure({"datasource", "namespace"} <= variables, f"variables {sorted(variables)}")
        exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
        ensure(len(exprs) >= 10, f"only {len(exprs)} queries")
        families = set()
        for e in exprs:
            used = queried_metrics(e)
            ensure(used, f"query reads no driver metric: {e}")
            ensure(used <= DRIVER_METRICS, f"query reads unknown metrics {sorted(used - DRIVER_METRICS)}: {e}")
            families |= used
        for needed in ("multicsi_csi_requests_total", "multicsi_csi_request_duration_seconds",
                       "multicsi_cloud_throttled_total", "multicsi_node_operations_total",
                       "process_resident_memory_bytes"):
            ensure(needed in families, f"no panel shows {needed}")
        # Every query parses as PromQL once Grafana's variables are filled in.
        ensure(promtool, "promtool not found: it checks the dashboard queries (apt-get install prometheus)")
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query_{i}",
             "expr": e.replace("$__rate_interval", "5m").replace("$namespace", "kube-system")}
            for i, e in enumerate(exprs)]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(rules, f)
            f.flush()
            res = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True, timeout=60)
        ensure(res.returncode == 0, f"promtool: {(res.stdout + res.stderr).strip()[-400:]}")
    a.__doc__ = f"Grafana dashboard ConfigMap in {namespace}: valid JSON, queries parse and read the driver's metrics"
    return a


def prometheus_rule_on(error_ratio, stuck_seconds, throttled_for):
    def a(docs):
        rule = one(docs, "PrometheusRule")
        ensure(rule["metadata"]["namespace"] == NAMESPACE, "namespace")
        alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
        ensure({"MulticsiHighRpcErrorRate", "MulticsiStuckOperation", "MulticsiCloudThrottled"} <= set(alerts),
               f"alerts {sorted(alerts)}")
        ensure(re.search(rf">\s*{re.escape(error_ratio)}\s*$", alerts["MulticsiHighRpcErrorRate"]["expr"].strip()),
               f"error ratio threshold: {alerts['MulticsiHighRpcErrorRate']['expr']}")
        ensure(alerts["MulticsiStuckOperation"]["expr"].strip().endswith(f"> {stuck_seconds}"),
               alerts["MulticsiStuckOperation"]["expr"])
        ensure(alerts["MulticsiCloudThrottled"]["for"] == throttled_for, alerts["MulticsiCloudThrottled"]["for"])
        for name, r in alerts.items():
            ensure(f'namespace="{NAMESPACE}"' in r["expr"], f"{name} is not scoped to the release namespace")
            ensure(r["labels"].get("severity") in ("info", "warning", "critical"), f"{name} severity")
            ensure("{{ $labels." in r["annotations"]["summary"] + r["annotations"]["description"],
                   f"{name}: Helm ate the alert's template")
    a.__doc__ = f"PrometheusRule: error ratio > {error_ratio}, stuck after {stuck_seconds} s, throttled for {throttled_for}"
    return a


def no_credentials_needed(docs):
    """hostpath: no credentials Secret and no credential env"""
    ensure(not by_kind(docs, "Secret"), "a Secret was rendered")
    env = env_of(containers(get_controller(docs))["multicsi"])
    ensure(not any(e.get("valueFrom", {}).get("secretKeyRef") for e in env.values()), "secret env without credentials")


def credentials_ref(secret_name, key, created):
    def a(docs):
        secrets = by_kind(docs, "Secret")
        if created:
            ensure(len(secrets) == 1 and secrets[0]["metadata"]["name"] == secret_name, f"secrets {secrets}")
            ensure(secrets[0]["stringData"] == {key: SECRET_VALUE}, "secret content")
            ensure("checksum/credentials" in get_controller(docs)["spec"]["template"]["metadata"]["annotations"],
                   "no rollout on credential change")
        else:
            ensure(not secrets, "a Secret was rendered although an existing one is named")
        env = env_of(containers(get_controller(docs))["multicsi"])
        ensure(env.get(key, {}).get("valueFrom", {}).get("secretKeyRef") == {"name": secret_name, "key": key},
               f"{key} env {env.get(key)}")
    a.__doc__ = f"controller reads {key} from Secret {secret_name} ({'created by the chart' if created else 'existing'})"
    return a


def driver_workloads(docs):
    """Every workload that runs the driver: the controller and each node plugin."""
    return [w for w in workloads(docs) if "multicsi" in containers(w)]


def plain_env(container_env):
    def a(docs):
        for w in driver_workloads(docs):
            env = env_of(containers(w)["multicsi"])
            for k, v in container_env.items():
                ensure(env.get(k, {}).get("value") == v, f"{w['kind']} {k}={env.get(k)}")
    a.__doc__ = "plain settings " + ", ".join(f"{k}={v}" for k, v in container_env.items())
    return a


def snapshot_metadata_absent(docs):
    """no snapshot-metadata sidecar, Service, RBAC or SnapshotMetadataService"""
    for w in workloads(docs):
        ensure("csi-snapshot-metadata" not in containers(w), f"{w['metadata']['name']} carries csi-snapshot-metadata")
    names = [d["metadata"]["name"] for d in docs if "snapshot-metadata" in d["metadata"]["name"]]
    ensure(not names, f"rendered {names}")
    ensure(not by_kind(docs, "SnapshotMetadataService"), "SnapshotMetadataService rendered")


def snapshot_metadata_on(tls_secret, cert_manager, crd=True):
    def a(docs):
        ds = get_node(docs)
        c = containers(ds)["csi-snapshot-metadata"]
        ensure(c["image"] == SIDECAR_REGISTRY + "csi-snapshot-metadata:v1.0.0", c["image"])
        args = c["args"]
        for flag in ("--csi-address=/csi/csi.sock", "--port=50051", "--tls-cert=/tls/tls.crt", "--tls-key=/tls/tls.key"):
            ensure(flag in args, f"{flag} missing: {args}")
        ensure(mounts_of(c)["socket-dir"]["mountPath"] == "/csi", "the sidecar does not share the driver's socket")
        tls = mounts_of(c)["snapshot-metadata-tls"]
        ensure(tls["mountPath"] == "/tls" and tls.get("readOnly"), f"TLS mount {tls}")
        ensure(volumes_of(ds)["snapshot-metadata-tls"]["secret"]["secretName"] == tls_secret,
               f"TLS volume {volumes_of(ds)['snapshot-metadata-tls']}")
        ensure(c["securityContext"].get("allowPrivilegeEscalation") is False, "the sidecar may escalate privileges")
        svc = one(docs, "Service", "-snapshot-metadata")
        ensure(labels_match(svc["spec"]["selector"], ds["spec"]["template"]["metadata"]["labels"]),
               "the Service does not select the node plugin pods")
        ensure(svc["spec"]["ports"] == [{"name": "cbt-grpc", "port": 6443, "targetPort": "cbt-grpc", "protocol": "TCP"}],
               str(svc["spec"]["ports"]))
        ensure("cbt-grpc" in {p["name"] for p in c["ports"]}, "the sidecar has no port cbt-grpc")
        sms = by_kind(docs, "SnapshotMetadataService")
        if crd:
            ensure(len(sms) == 1, f"{len(sms)} SnapshotMetadataService objects")
            spec = sms[0]["spec"]
            ensure(sms[0]["metadata"]["name"] == "multicsi.io", "SnapshotMetadataService not named after the driver")
            ensure(spec["address"] == f"{svc['metadata']['name']}.{NAMESPACE}.svc:6443", spec["address"])
            ensure(spec["audience"] == "multicsi.io", spec["audience"])
            import base64
            ensure(base64.b64decode(spec["caCert"]).decode().startswith("-----BEGIN CERTIFICATE-----"), "caCert is not the PEM, base64")
        else:
            ensure(not sms, "SnapshotMetadataService rendered without its API")
        certs = by_kind(docs, "Certificate")
        if cert_manager:
            ensure(len(certs) == 1 and certs[0]["spec"]["secretName"] == tls_secret, f"Certificate {certs}")
            ensure(f"{svc['metadata']['name']}.{NAMESPACE}.svc" in certs[0]["spec"]["dnsNames"],
                   "the certificate does not name the Service")
        else:
            ensure(not certs, "a Certificate rendered without tls.certManager")
    a.__doc__ = (f"snapshot-metadata sidecar with TLS from {tls_secret}, Service, RBAC"
                 + (", SnapshotMetadataService" if crd else ", no SnapshotMetadataService (no API)")
                 + (", cert-manager Certificate" if cert_manager else ""))
    return a


def pinned_to(node):
    def a(docs):
        for w in (get_controller(docs), get_node(docs)):
            ensure(w["spec"]["template"]["spec"]["nodeSelector"].get("kubernetes.io/hostname") == node,
                   f"{w['kind']} not pinned to {node}")
    a.__doc__ = f"hostpath controller and node pinned to {node}"
    return a


def service_monitor_on(docs):
    """ServiceMonitor rendered and scraping both metrics Services"""
    one(docs, "ServiceMonitor")


def config_mounted(docs):
    """config: ConfigMap with config.toml, mounted and passed with --config on controller and node"""
    cm = one(docs, "ConfigMap")
    ensure("log-level" in cm["data"]["config.toml"], cm["data"])
    for w in (get_controller(docs), get_node(docs)):
        c = containers(w)["multicsi"]
        ensure("--config=/etc/multicsi/config.toml" in c["args"], f"{w['kind']} args {c['args']}")
        ensure(mounts_of(c)["config"]["mountPath"] == "/etc/multicsi", "config mount")
        ensure(volumes_of(w)["config"]["configMap"]["name"] == cm["metadata"]["name"], "config volume")
        ensure("checksum/config" in w["spec"]["template"]["metadata"]["annotations"], "no rollout on config change")


def no_config(docs):
    """no config: no ConfigMap and no --config"""
    ensure(not by_kind(docs, "ConfigMap"), "ConfigMap rendered")
    ensure(not any(a.startswith("--config") for a in containers(get_controller(docs))["multicsi"]["args"]), "--config")


def extras_everywhere(docs):
    """extraArgs and extraEnv reach every container; imagePullSecrets every pod"""
    for w in by_kind(docs, "Deployment") + by_kind(docs, "DaemonSet"):
        spec = w["spec"]["template"]["spec"]
        ensure(spec.get("imagePullSecrets") == [{"name": "regcred"}], f"{w['metadata']['name']} pull secrets")
        for c in spec["containers"]:
            ensure("--extra-flag-" + c["name"] in c["args"], f"{c['name']} misses its extra arg")
            ensure("EXTRA_" + c["name"].upper().replace("-", "_") in env_of(c), f"{c['name']} misses its extra env")


def custom_kubelet_dir(docs):
    """custom kubeletDir: plugin, registration and kubelet mounts follow it"""
    ds = get_node(docs)
    hp = host_paths(ds)
    for p in ("/var/snap/microk8s/common/var/lib/kubelet", "/var/snap/microk8s/common/var/lib/kubelet/plugins/multicsi.io",
              "/var/snap/microk8s/common/var/lib/kubelet/plugins_registry"):
        ensure(p in hp, f"missing {p}")
    m = mount_for_host_path(ds, "multicsi", "/var/snap/microk8s/common/var/lib/kubelet")
    ensure(m["mountPath"] == "/var/snap/microk8s/common/var/lib/kubelet" and m["mountPropagation"] == "Bidirectional", str(m))
    kubelet_dir_env("/var/snap/microk8s/common/var/lib/kubelet")(docs)


def custom_classes(docs):
    """user StorageClasses replace the defaults, LUKS/xfs/Retain/Immediate honoured"""
    scs = {d["metadata"]["name"]: d for d in by_kind(docs, "StorageClass")}
    ensure(set(scs) == {"fast", "vault"}, f"{sorted(scs)}")
    f, v = scs["fast"], scs["vault"]
    ensure(f["parameters"] == {"csi.storage.k8s.io/fstype": "xfs", "multicsi.io/volume-type": "ssd"}, str(f["parameters"]))
    ensure(f["reclaimPolicy"] == "Retain" and f["volumeBindingMode"] == "Immediate", "fast policies")
    ensure(f["allowVolumeExpansion"] is False and f["mountOptions"] == ["noatime"], "fast expansion/mount options")
    ensure(v["parameters"]["multicsi.io/luks-key-size"] == "256" and v["parameters"]["multicsi.io/luks-cipher"] == "aes-xts-plain64",
           str(v["parameters"]))
    ensure(v["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true", "vault default")


def renamed(docs):
    """another release name prefixes every namespaced object"""
    for d in docs:
        if d["metadata"].get("namespace"):
            ensure(d["metadata"]["name"].startswith("storage-multicsi-"), d["metadata"]["name"])


def image_versions(docs):
    """images: driver from appVersion, sidecars pinned to registry.k8s.io/sig-storage"""
    want = {"multicsi": "ghcr.io/multicsi/multicsi:0.1.0",
            "csi-provisioner": SIDECAR_REGISTRY + "csi-provisioner:v6.",
            "csi-attacher": SIDECAR_REGISTRY + "csi-attacher:v4.",
            "csi-resizer": SIDECAR_REGISTRY + "csi-resizer:v2.",
            "csi-snapshotter": SIDECAR_REGISTRY + "csi-snapshotter:v8.",
            "liveness-probe": SIDECAR_REGISTRY + "livenessprobe:v2.",
            "node-driver-registrar": SIDECAR_REGISTRY + "csi-node-driver-registrar:v2."}
    for w in (get_controller(docs), get_node(docs)):
        for n, c in containers(w).items():
            ensure(c["image"].startswith(want[n]), f"{n} image {c['image']}")


def overridden_images(docs):
    """image overrides: driver digest and a mirrored sidecar registry"""
    cs = containers(get_controller(docs))
    ensure(cs["multicsi"]["image"] == "mirror.example/multicsi@sha256:" + "a" * 64, cs["multicsi"]["image"])
    ensure(cs["csi-provisioner"]["image"] == "mirror.example/csi-provisioner:v6.3.0", cs["csi-provisioner"]["image"])


# ================================================================= examples
# ------------------------------------------------------- several backends
def node_plugins(docs):
    """The node plugin DaemonSets by the backend they serve (--node-backends)."""
    found = {}
    for ds in by_kind(docs, "DaemonSet"):
        args = containers(ds)["multicsi"]["args"]
        served = [a.split("=", 1)[1] for a in args if a.startswith("--node-backends=")]
        ensure(len(served) == 1, f"DaemonSet/{ds['metadata']['name']} has no single --node-backends: {args}")
        found[served[0]] = ds
    return found


def multi_backend(backends, default):
    expected_args = f"--backends={','.join(backends)}"

    def a(docs):
        ctrl = get_controller(docs)
        ensure(ctrl["kind"] == "Deployment" and driver_mode(ctrl) == "controller", "the controller is no Deployment")
        c = containers(ctrl)["multicsi"]
        ensure(expected_args in c["args"], f"controller args {c['args']}")
        ensure(env_of(c)["MULTICSI_BACKEND"]["value"] == default, "the default backend")
        plugins = node_plugins(docs)
        ensure(sorted(plugins) == sorted(backends), f"node plugins for {sorted(plugins)}")
        for backend, ds in plugins.items():
            ensure(ds["metadata"]["name"] == f"{RELEASE}-node-{backend}", f"DaemonSet name {ds['metadata']['name']}")
            dc = containers(ds)["multicsi"]
            ensure(expected_args in dc["args"] and "--mode=node" in dc["args"], f"{backend} node args {dc['args']}")
            ensure(node_selector(ds).get("multicsi.io/cloud") == backend, f"{backend} node selector {node_selector(ds)}")
            ensure(ds["spec"]["selector"]["matchLabels"].get("multicsi.io/node-backend") == backend,
                   f"{backend} DaemonSet selector {ds['spec']['selector']}")
            ensure(bool(ds["spec"]["template"]["spec"].get("hostNetwork")) == (backend == "packet"),
                   f"{backend} node host network")
            ensure(("/etc/iscsi" in host_paths(ds)) == (backend == "packet"), f"{backend} node iSCSI mounts")
            ensure(("civostatsd" in volumes_of(ds)) == (backend == "civo"), f"{backend} node civostatsd")
            ensure(env_of(dc).keys().isdisjoint({"CLOUDSCALE_ACCESS_TOKEN", "CIVO_API_KEY", "PACKET_API_KEY"}),
                   f"{backend} node receives cloud credentials")
        for i, x in enumerate(plugins.values()):
            for y in list(plugins.values())[i + 1:]:
                ensure(never_on_one_node(x, y), "two node plugins can land on one node")
    a.__doc__ = f"one controller with {expected_args}, default {default}; one node plugin per backend on its cloud's nodes"
    return a


def credentials_for(secret_name, keys, created):
    def a(docs):
        env = env_of(containers(get_controller(docs))["multicsi"])
        for key in keys:
            ensure(env.get(key, {}).get("valueFrom", {}).get("secretKeyRef") == {"name": secret_name, "key": key},
                   f"{key} env {env.get(key)}")
        secrets = by_kind(docs, "Secret")
        if created:
            ensure(len(secrets) == 1 and secrets[0]["metadata"]["name"] == secret_name, f"secrets {secrets}")
            ensure(secrets[0]["stringData"] == {k: SECRET_VALUE for k in keys}, "secret keys")
        else:
            ensure(not secrets, "a Secret was rendered although an existing one is named")
    a.__doc__ = f"controller reads {', '.join(keys)} from Secret {secret_name} ({'created' if created else 'existing'})"
    return a


def snapshot_classes(expected):
    def a(docs):
        vscs = {d["metadata"]["name"]: d for d in by_kind(docs, "VolumeSnapshotClass")}
        ensure(sorted(vscs) == sorted(expected), f"VolumeSnapshotClasses {sorted(vscs)}, want {sorted(expected)}")
        defaults = [n for n, d in vscs.items()
                    if d["metadata"]["annotations"]["snapshot.storage.kubernetes.io/is-default-class"] == "true"]
        ensure(defaults == list(expected)[:1], f"default snapshot classes {defaults}")
        for name, backend in expected.items():
            ensure(vscs[name].get("parameters", {}).get("multicsi.io/backend") == backend,
                   f"{name} parameters {vscs[name].get('parameters')}")
        ensure("csi-snapshotter" in containers(get_controller(docs)), "no csi-snapshotter")
    a.__doc__ = "VolumeSnapshotClasses " + ", ".join(f"{n} ({b})" for n, b in expected.items())
    return a


def check_examples(r: Runner):
    manifests = sorted(p for p in glob.glob(os.path.join(r.examples, "*.yaml"))
                       if not os.path.basename(p).startswith("values-"))
    wanted = {"pvc-pod.yaml", "luks-pvc.yaml", "snapshot.yaml", "restore.yaml", "expand.yaml", "raw-block.yaml",
              "group-snapshot.yaml", "group-restore.yaml"}
    r.check("[examples] every example manifest exists", lambda: ensure(
        wanted <= {os.path.basename(p) for p in manifests}, f"missing {wanted - {os.path.basename(p) for p in manifests}}"))
    loaded = {}
    for p in manifests:
        name = os.path.basename(p)
        with open(p) as f:
            loaded[name] = [d for d in yaml.safe_load_all(f) if d]
        for v in r.versions:
            r.check(f"[examples] {name} valid against Kubernetes {v} (strict)", r.validate_core, loaded[name], v)
        r.check(f"[examples] {name} custom resources valid", r.validate_custom, loaded[name])

    def doc(name, kind):
        found = by_kind(loaded.get(name, []), kind)
        ensure(found, f"{name} has no {kind}")
        return found[0]

    def luks():
        pvc, sc = doc("luks-pvc.yaml", "PersistentVolumeClaim"), doc("luks-pvc.yaml", "StorageClass")
        secrets = {d["metadata"]["name"]: d for d in by_kind(loaded["luks-pvc.yaml"], "Secret")}
        secret = secrets.get(pvc["metadata"]["name"] + "-luks-key")
        ensure(secret, "no Secret <claim name>-luks-key")
        ensure("luksKey" in secret.get("stringData", secret.get("data", {})), "key luksKey")
        ensure(pvc["spec"]["storageClassName"] == sc["metadata"]["name"], "claim uses the LUKS class")
        ensure(sc["parameters"]["csi.storage.k8s.io/node-stage-secret-name"] == "${pvc.name}-luks-key", "secret template")
    r.check("[examples] luks-pvc.yaml: Secret <pvc>-luks-key with luksKey, LUKS class", luks)

    def luks_per_volume():
        classes = {d["metadata"]["name"]: d for d in by_kind(loaded["luks-pvc.yaml"], "StorageClass")}
        secrets = {d["metadata"]["name"]: d for d in by_kind(loaded["luks-pvc.yaml"], "Secret")}
        sc = classes.get("multicsi-luks-per-volume")
        ensure(sc, "no per-volume key class")
        params = sc["parameters"]
        master = secrets.get(params["csi.storage.k8s.io/node-stage-secret-name"])
        ensure(master and master["metadata"].get("namespace") == params["csi.storage.k8s.io/node-stage-secret-namespace"],
               "the class's node-stage secret is in the example")
        value = master.get("stringData", {}).get("luksMasterKey", "")
        ensure(len(value) >= 32, "luksMasterKey of at least 32 bytes")
    r.check("[examples] luks-pvc.yaml: a per-volume key class with its luksMasterKey Secret", luks_per_volume)

    def snapshot_chain():
        pvc = doc("pvc-pod.yaml", "PersistentVolumeClaim")
        snap = doc("snapshot.yaml", "VolumeSnapshot")
        ensure(snap["spec"]["source"] == {"persistentVolumeClaimName": pvc["metadata"]["name"]}, "snapshot source")
        restored = doc("restore.yaml", "PersistentVolumeClaim")
        ensure(restored["spec"]["dataSource"] == {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                                  "name": snap["metadata"]["name"]}, "restore dataSource")
        pod = doc("restore.yaml", "Pod")
        ensure(pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == restored["metadata"]["name"], "pod claim")
    r.check("[examples] snapshot.yaml snapshots pvc-pod's claim, restore.yaml restores it", snapshot_chain)

    def group_chain():
        claims = by_kind(loaded["group-snapshot.yaml"], "PersistentVolumeClaim")
        group = doc("group-snapshot.yaml", "VolumeGroupSnapshot")
        selected = group["spec"]["source"]["selector"]["matchLabels"]
        ensure(len(claims) == 2, f"{len(claims)} claims")
        ensure(all(labels_match(selected, c["metadata"].get("labels", {})) for c in claims),
               "the selector picks both claims")
        ensure(group["spec"]["volumeGroupSnapshotClassName"] == "hostpath-group-snapshots", "the chart's class")
        restored = by_kind(loaded["group-restore.yaml"], "PersistentVolumeClaim")
        ensure(len(restored) == 2, f"{len(restored)} restored claims")
        for c in restored:
            ensure(c["spec"]["dataSource"]["kind"] == "VolumeSnapshot", "restored from a member VolumeSnapshot")
        pod = doc("group-restore.yaml", "Pod")
        ensure({v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]}
               == {c["metadata"]["name"] for c in restored}, "the pod uses both restored claims")
    r.check("[examples] group-snapshot.yaml groups two claims, group-restore.yaml restores both", group_chain)

    def expand():
        before, after = doc("pvc-pod.yaml", "PersistentVolumeClaim"), doc("expand.yaml", "PersistentVolumeClaim")
        ensure(before["metadata"]["name"] == after["metadata"]["name"], "same claim")
        gi = lambda q: int(q.rstrip("Gi"))
        ensure(gi(after["spec"]["resources"]["requests"]["storage"]) > gi(before["spec"]["resources"]["requests"]["storage"]),
               "not larger")
    r.check("[examples] expand.yaml asks the same claim for more", expand)

    def raw_block():
        pvc, pod = doc("raw-block.yaml", "PersistentVolumeClaim"), doc("raw-block.yaml", "Pod")
        ensure(pvc["spec"]["volumeMode"] == "Block", "volumeMode")
        c = pod["spec"]["containers"][0]
        ensure(c.get("volumeDevices") and not c.get("volumeMounts"), "pod must use volumeDevices")
    r.check("[examples] raw-block.yaml: Block claim used through volumeDevices", raw_block)


# ================================================================= main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--helm", required=True)
    ap.add_argument("--chart", required=True)
    ap.add_argument("--examples", required=True)
    ap.add_argument("--k8s", default="1.34.0,1.35.0,1.36.0")
    ap.add_argument("--promtool", default="", help="promtool, to check alert and dashboard queries")
    ap.add_argument("-v", "--verbose", action="store_true")
    o = ap.parse_args()
    r = Runner(o.helm, o.chart, o.examples, o.k8s.split(","), o.verbose, o.promtool)
    ex = lambda n: os.path.join(o.examples, f"values-{n}.yaml")

    # The validator itself must be able to fail, or the checks below prove nothing.
    def validator_bites():
        bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}, "bogus": 1}
        try:
            kubernetes_validate.validate(bad, r.versions[0], strict=True)
        except kubernetes_validate.ValidationError:
            return
        raise CheckFailed("kubernetes-validate accepted an unknown field")
    r.check("[self] strict validation rejects an unknown field", validator_bites)

    # Lint: defaults and every example.
    for name, files in [("defaults", [])] + [(os.path.basename(ex(b)), [ex(b)]) for b in ("hostpath", "cloudscale", "civo", "packet", "multi-backend")]:
        def lint(files=files):
            args = ["lint", "--strict", o.chart, "--namespace", NAMESPACE]
            for f in files:
                args += ["-f", f]
            res = r.run_helm(*args)
            ensure(res.returncode == 0, (res.stdout + res.stderr).strip()[-400:])
        r.check(f"[lint] helm lint --strict {name}", lint)

    # The CRDs of crds/ are what custom resources are checked against.
    def crds():
        ensure(r.crds, f"no CRD in {o.chart}/crds: Helm installs only those ahead of the templates")
        r.capture_crd_schemas()
    r.check("[crds] snapshot.storage.k8s.io/v1 CRDs in the chart's crds/", crds)

    hostpath_layout = [hostpath_controller_on_host, hostpath_shape, csidriver(True), capacity_tracking(True),
                       kubelet_dir_env("/var/lib/kubelet")]
    r.scenario("defaults (hostpath)", asserts=[
        *hostpath_layout, driver_env, node_common, node_not_host_network,
        storage_classes({"multicsi-hostpath": {}}, "multicsi-hostpath"), snapshot_objects(True), rbac_scoped,
        group_snapshot_objects(True),
        metrics_services, observability_off, no_credentials_needed, no_config, image_versions, no_civo_statsd,
        helm_test_hook("multicsi-hostpath"), snapshot_metadata_absent])

    r.scenario("values-hostpath.yaml", [ex("hostpath")], asserts=[
        *hostpath_layout, node_common, node_not_host_network, snapshot_objects(True),
        storage_classes({"multicsi-hostpath": {}, "multicsi-hostpath-xfs": {"csi.storage.k8s.io/fstype": "xfs"},
                         "multicsi-hostpath-luks": LUKS()}, "multicsi-hostpath")])
    # The cluster states an install meets (see Runner.api_versions).
    for label, files in [("defaults", [])] + [(f"values-{b}.yaml", [ex(b)]) for b in ("hostpath", "cloudscale")]:
        r.scenario(f"{label}, snapshot CRDs already in the cluster (--skip-crds)", files, cluster="crds-present",
                   asserts=[snapshot_objects(True)])
        r.scenario(f"{label}, --skip-crds on a cluster without them", files, cluster="no-crds",
                   asserts=[snapshot_api_absent, group_snapshot_objects(False, api=False)])
    r.scenario("values-cloudscale.yaml", [ex("cloudscale")], asserts=[
        csidriver(False), capacity_tracking(False), kubelet_dir_env("/var/lib/kubelet"), helm_test_hook("cloudscale-volume-ssd"),
        controller_shape(True), driver_env, node_common, node_not_host_network, node_state_dir_only, snapshot_objects(True),
        group_snapshot_objects(False),
        rbac_scoped, credentials_ref("multicsi-cloudscale", "CLOUDSCALE_ACCESS_TOKEN", created=False),
        storage_classes({"cloudscale-volume-ssd": {"multicsi.io/volume-type": "ssd"},
                         "cloudscale-volume-bulk": {"multicsi.io/volume-type": "bulk"},
                         "cloudscale-volume-ssd-luks": LUKS({"multicsi.io/volume-type": "ssd"}),
                         "cloudscale-volume-bulk-luks": LUKS({"multicsi.io/volume-type": "bulk"})},
                        "cloudscale-volume-ssd")])
    r.scenario("values-civo.yaml", [ex("civo")], asserts=[
        controller_shape(False), driver_env, node_common, node_not_host_network, node_state_dir_only, snapshot_objects(False),
        credentials_ref("multicsi-civo", "CIVO_API_KEY", created=False),
        plain_env({"CIVO_REGION": "LON1", "CIVO_CLUSTER_ID": "00000000-0000-0000-0000-000000000000"}),
        civo_statsd("/etc/civostatsd"),
        storage_classes({"civo-volume": {}, "civo-volume-luks": LUKS()}, "civo-volume")])
    r.scenario("values-packet.yaml", [ex("packet")], asserts=[
        controller_shape(False), driver_env, node_common, node_packet, node_state_dir_only, snapshot_objects(False),
        credentials_ref("multicsi-packet", "PACKET_API_KEY", created=False), no_civo_statsd,
        plain_env({"PACKET_PROJECT_ID": "00000000-0000-0000-0000-000000000000"}),
        storage_classes({"packet-standard": {"multicsi.io/plan": "standard"},
                         "packet-performance": {"multicsi.io/plan": "performance"}}, "packet-standard")])

    # Switches.
    cs_created = ["backend=cloudscale", "credentials.create=true", f"credentials.cloudscaleAccessToken={SECRET_VALUE}"]
    r.scenario("cloudscale, credentials created by the chart", sets=cs_created, asserts=[
        credentials_ref("multicsi-credentials", "CLOUDSCALE_ACCESS_TOKEN", created=True), node_common])
    r.scenario("civo defaults, snapshots switch left on", sets=[
        "backend=civo", "credentials.existingSecret=civo", "civo.region=FRA1", "civo.clusterId=abc"], asserts=[
        controller_shape(False), snapshot_objects(False), storage_classes({"civo-volume": {}}, "civo-volume"),
        plain_env({"CIVO_VOLUME_SNAPSHOTS": "false"})])
    r.scenario("civo with volume snapshots", sets=[
        "backend=civo", "credentials.existingSecret=civo", "civo.region=FRA1", "civo.clusterId=abc",
        "civo.volumeSnapshots=true"], asserts=[
        controller_shape(True), snapshot_objects(True), plain_env({"CIVO_VOLUME_SNAPSHOTS": "true"})])
    r.scenario("civo, credentials created by the chart", sets=[
        "backend=civo", "credentials.create=true", f"credentials.civoApiKey={SECRET_VALUE}", "civo.region=FRA1",
        "civo.clusterId=abc"], asserts=[credentials_ref("multicsi-credentials", "CIVO_API_KEY", created=True)])
    r.scenario("civo, civostatsd elsewhere on the host", sets=[
        "backend=civo", "credentials.existingSecret=civo", "civo.region=FRA1", "civo.clusterId=abc",
        "civo.statsdFile=/opt/civo/statsd"], asserts=[civo_statsd("/opt/civo/statsd")])
    r.scenario("civo without civostatsd", sets=[
        "backend=civo", "credentials.existingSecret=civo", "civo.region=FRA1", "civo.clusterId=abc",
        "civo.statsdFile="], asserts=[no_civo_statsd, node_common])
    r.scenario("packet defaults", sets=["backend=packet", "credentials.existingSecret=metal", "packet.projectId=p1"],
               asserts=[node_packet, controller_shape(False), snapshot_objects(False),
                        credentials_ref("metal", "PACKET_API_KEY", created=False),
                        storage_classes({"packet-standard": {"multicsi.io/plan": "standard"},
                                         "packet-performance": {"multicsi.io/plan": "performance"}}, "packet-standard")])
    r.scenario("packet, created credentials, facility set, host network forced off", sets=[
        "backend=packet", "credentials.create=true", f"credentials.packetApiKey={SECRET_VALUE}",
        "packet.projectId=p1", "packet.facilityId=ewr1", "node.hostNetwork=false"], asserts=[
        credentials_ref("multicsi-credentials", "PACKET_API_KEY", created=True),
        plain_env({"PACKET_PROJECT_ID": "p1", "PACKET_FACILITY_ID": "ewr1"}), packet_mounts_without_host_network])
    r.scenario("hostpath pinned to a node", sets=["hostpath.nodeName=worker-1"], asserts=[pinned_to("worker-1")])
    r.scenario("snapshots off", sets=["snapshots.enabled=false"], asserts=[snapshot_objects(False)])
    r.scenario("group snapshots off", sets=["groupSnapshots.enabled=false"], asserts=[
        snapshot_objects(True), group_snapshot_objects(False, api=False)])
    r.scenario("VolumeGroupSnapshotClass off", sets=["volumeGroupSnapshotClass.enabled=false"], asserts=[
        lambda d: ensure(not by_kind(d, "VolumeGroupSnapshotClass"), "VolumeGroupSnapshotClass rendered")])
    r.scenario("VolumeGroupSnapshotClass named, not default, Retain", sets=[
        "volumeGroupSnapshotClass.name=db-groups", "volumeGroupSnapshotClass.default=false",
        "volumeGroupSnapshotClass.deletionPolicy=Retain"], asserts=[
        lambda d: ensure([(c["metadata"]["name"], c["deletionPolicy"],
                           c["metadata"]["annotations"]["groupsnapshot.storage.kubernetes.io/is-default-class"])
                          for c in by_kind(d, "VolumeGroupSnapshotClass")] == [("db-groups", "Retain", "false")],
                         "class settings")])
    ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    sm_secret = ["snapshotMetadata.enabled=true", "snapshotMetadata.tls.existingSecret=cbt-tls"]
    r.scenario("snapshot metadata with an existing TLS Secret", sets=sm_secret, set_json=[f"snapshotMetadata.tls.caCert={json.dumps(ca)}"],
               asserts=[snapshot_metadata_on("cbt-tls", False)])
    r.scenario("snapshot metadata, CRDs skipped", sets=sm_secret, cluster="no-crds",
               set_json=[f"snapshotMetadata.tls.caCert={json.dumps(ca)}"], asserts=[snapshot_metadata_on("cbt-tls", False, crd=False)])
    r.scenario("snapshot metadata with a cert-manager Certificate", sets=[
        "snapshotMetadata.enabled=true", "snapshotMetadata.tls.certManager.enabled=true",
        "snapshotMetadata.tls.certManager.issuerRef.name=cluster-ca", "snapshotMetadata.tls.certManager.issuerRef.kind=ClusterIssuer"],
        set_json=[f"snapshotMetadata.tls.caCert={json.dumps(ca)}"],
        asserts=[snapshot_metadata_on("multicsi-snapshot-metadata-tls", True)])
    r.scenario("helm test hook off", sets=["tests.enabled=false"], asserts=[
        lambda d: ensure(not [x for x in d if x["metadata"].get("annotations", {}).get("helm.sh/hook")], "hook rendered")])
    r.scenario("helm test of another class", sets=["tests.storageClassName=fast"], asserts=[helm_test_hook("fast")])
    r.scenario("node plugin updated OnDelete", set_json=['node.updateStrategy={"type":"OnDelete"}'], asserts=[
        lambda d: ensure(get_node(d)["spec"]["updateStrategy"] == {"type": "OnDelete"}, str(get_node(d)["spec"]["updateStrategy"]))])
    r.scenario("snapshot controller off", sets=["snapshotController.enabled=false"], asserts=[
        snapshot_objects(True, ctrl=False)])
    r.scenario("VolumeSnapshotClass off", sets=["volumeSnapshotClass.enabled=false"], asserts=[
        lambda d: ensure(not by_kind(d, "VolumeSnapshotClass"), "VolumeSnapshotClass rendered")])
    r.scenario("ServiceMonitor on", sets=["metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prom"],
               asserts=[service_monitor_on])
    r.scenario("Grafana dashboard on", sets=["metrics.dashboard.enabled=true"],
               asserts=[dashboard_on(NAMESPACE, o.promtool)])
    r.scenario("Grafana dashboard in Grafana's namespace",
               sets=["metrics.dashboard.enabled=true", "metrics.dashboard.namespace=monitoring"],
               asserts=[dashboard_on("monitoring", o.promtool)])
    r.scenario("PrometheusRule on", sets=["metrics.prometheusRule.enabled=true"],
               asserts=[prometheus_rule_on("0.05", 600, "10m")])
    r.scenario("PrometheusRule with own thresholds",
               set_json=["metrics.prometheusRule.rpcErrorRatio=0.2"],
               sets=["metrics.prometheusRule.enabled=true", "metrics.prometheusRule.stuckOperationSeconds=1800", "metrics.prometheusRule.throttledFor=30m",
                     "metrics.prometheusRule.labels.release=prom"],
               asserts=[prometheus_rule_on("0.2", 1800, "30m")])
    r.scenario("metrics Services off", sets=["metrics.service.enabled=false", "metrics.serviceMonitor.enabled=true"],
               asserts=[lambda d: ensure(not by_kind(d, "Service") and not by_kind(d, "ServiceMonitor"), "rendered")])
    r.scenario("PodDisruptionBudgets off", sets=["controller.podDisruptionBudget.enabled=false",
                                                  "snapshotController.podDisruptionBudget.enabled=false"],
               asserts=[lambda d: ensure(not by_kind(d, "PodDisruptionBudget"), "PDB rendered")])
    r.scenario("config file", set_json=['config="log-level = \\"debug\\"\\n"'], asserts=[config_mounted])
    r.scenario("custom StorageClasses", set_json=['storageClasses=[{"name":"fast","fsType":"xfs","reclaimPolicy":"Retain",'
                                                  '"volumeBindingMode":"Immediate","allowVolumeExpansion":false,'
                                                  '"mountOptions":["noatime"],"parameters":{"multicsi.io/volume-type":"ssd"}},'
                                                  '{"name":"vault","default":true,"luks":{"enabled":true,"keySize":256}}]'],
               asserts=[custom_classes])
    r.scenario("custom kubeletDir", sets=["kubeletDir=/var/snap/microk8s/common/var/lib/kubelet/"], asserts=[custom_kubelet_dir])
    r.scenario("release named storage", release="storage", asserts=[renamed])
    r.scenario("image overrides", sets=["image.repository=mirror.example/multicsi", "image.digest=sha256:" + "a" * 64,
                                        "sidecars.provisioner.image.repository=mirror.example/csi-provisioner"],
               asserts=[overridden_images])
    extra = []
    for c, path in [("multicsi", "controller"), ("multicsi", "node"), ("csi-provisioner", "sidecars.provisioner"),
                    ("csi-attacher", "sidecars.attacher"), ("csi-resizer", "sidecars.resizer"),
                    ("csi-snapshotter", "sidecars.snapshotter"), ("liveness-probe", "sidecars.livenessProbe"),
                    ("node-driver-registrar", "sidecars.nodeDriverRegistrar"),
                    ("snapshot-controller", "snapshotController")]:
        env_name = "EXTRA_" + c.upper().replace("-", "_")
        extra.append(f'{path}.extraEnv=[{{"name":"{env_name}","value":"1"}}]')
    r.scenario("extra args, env and pull secrets everywhere",
               sets=["imagePullSecrets[0].name=regcred",
                     "controller.extraArgs[0]=--extra-flag-multicsi", "node.extraArgs[0]=--extra-flag-multicsi",
                     "sidecars.provisioner.extraArgs[0]=--extra-flag-csi-provisioner",
                     "sidecars.attacher.extraArgs[0]=--extra-flag-csi-attacher",
                     "sidecars.resizer.extraArgs[0]=--extra-flag-csi-resizer",
                     "sidecars.snapshotter.extraArgs[0]=--extra-flag-csi-snapshotter",
                     "sidecars.livenessProbe.extraArgs[0]=--extra-flag-liveness-probe",
                     "sidecars.nodeDriverRegistrar.extraArgs[0]=--extra-flag-node-driver-registrar",
                     "snapshotController.extraArgs[0]=--extra-flag-snapshot-controller"],
               set_json=extra, asserts=[extras_everywhere])

    # Several backends in one release.
    r.scenario("values-multi-backend.yaml", [ex("multi-backend")], asserts=[
        multi_backend(["cloudscale", "civo"], "cloudscale"), controller_shape(True), driver_env_multi,
        credentials_for("multicsi-clouds", ["CLOUDSCALE_ACCESS_TOKEN", "CIVO_API_KEY"], created=False),
        plain_env({"CIVO_REGION": "LON1", "CIVO_VOLUME_SNAPSHOTS": "false"}),
        csidriver(False), capacity_tracking(False), rbac_scoped, helm_test_hook("cloudscale-volume-ssd"),
        snapshot_classes({"cloudscale-snapshots": "cloudscale"}),
        storage_classes({"cloudscale-volume-ssd": {"multicsi.io/volume-type": "ssd", "multicsi.io/backend": "cloudscale"},
                         "cloudscale-volume-bulk": {"multicsi.io/volume-type": "bulk", "multicsi.io/backend": "cloudscale"},
                         "cloudscale-volume-ssd-luks": LUKS({"multicsi.io/volume-type": "ssd", "multicsi.io/backend": "cloudscale"}),
                         "cloudscale-volume-bulk-luks": LUKS({"multicsi.io/volume-type": "bulk", "multicsi.io/backend": "cloudscale"}),
                         "civo-volume": {"multicsi.io/backend": "civo"}}, "cloudscale-volume-ssd")])
    three = ["backend=civo", "backends={cloudscale,packet,civo}", "credentials.create=true",
             f"credentials.cloudscaleAccessToken={SECRET_VALUE}", f"credentials.civoApiKey={SECRET_VALUE}",
             f"credentials.packetApiKey={SECRET_VALUE}", "civo.region=FRA1", "civo.clusterId=c1", "civo.volumeSnapshots=true",
             "packet.projectId=p1", "cloudscale.nodeSelector.multicsi\\.io/cloud=cloudscale",
             "civo.nodeSelector.multicsi\\.io/cloud=civo", "packet.nodeSelector.multicsi\\.io/cloud=packet"]
    r.scenario("three clouds, civo the default, credentials created by the chart", sets=three, asserts=[
        multi_backend(["civo", "cloudscale", "packet"], "civo"),
        credentials_for("multicsi-credentials", ["CIVO_API_KEY", "CLOUDSCALE_ACCESS_TOKEN", "PACKET_API_KEY"], created=True),
        plain_env({"CIVO_REGION": "FRA1", "CIVO_VOLUME_SNAPSHOTS": "true", "PACKET_PROJECT_ID": "p1"}),
        snapshot_classes({"civo-snapshots": "civo", "cloudscale-snapshots": "cloudscale"}),
        storage_classes({"civo-volume": {"multicsi.io/backend": "civo"},
                         "cloudscale-volume-ssd": {"multicsi.io/backend": "cloudscale"},
                         "cloudscale-volume-bulk": {"multicsi.io/backend": "cloudscale"},
                         "cloudscale-volume-ssd-luks": LUKS({"multicsi.io/backend": "cloudscale"}),
                         "cloudscale-volume-bulk-luks": LUKS({"multicsi.io/backend": "cloudscale"}),
                         "packet-standard": {"multicsi.io/plan": "standard", "multicsi.io/backend": "packet"},
                         "packet-performance": {"multicsi.io/plan": "performance", "multicsi.io/backend": "packet"}},
                        "civo-volume")])
    r.scenario("several backends, own StorageClasses naming their backend", [ex("multi-backend")],
               set_json=['storageClasses=[{"name":"fast","default":true,"backend":"cloudscale"},{"name":"civo-xfs","fsType":"xfs","backend":"civo"}]'],
               asserts=[storage_classes({"fast": {"multicsi.io/backend": "cloudscale"},
                                         "civo-xfs": {"multicsi.io/backend": "civo", "csi.storage.k8s.io/fstype": "xfs"}}, "fast")])
    r.scenario("one backend listed in backends as well", [ex("cloudscale")], sets=["backends={cloudscale}"], asserts=[
        lambda d: ensure(not any(a.startswith("--backends") for w in (get_controller(d), get_node(d))
                                 for a in containers(w)["multicsi"]["args"]),
                         "--backends for one backend"),
        lambda d: ensure(get_node(d)["metadata"]["name"] == f"{RELEASE}-node", "node DaemonSet renamed")])
    multi = [ex("multi-backend")]
    r.must_fail("hostpath beside a cloud backend", r"hostpath cannot share a release with a cloud backend.*own driverName",
                sets=["backend=hostpath", "backends={cloudscale}", "credentials.existingSecret=s",
                      "cloudscale.nodeSelector.a=b"])
    r.must_fail("a cloud backend beside hostpath (backends lists hostpath)", r"hostpath cannot share a release",
                [ex("cloudscale")], sets=["backends={hostpath}"])
    r.must_fail("several backends, one without a node selector", r"set civo.nodeSelector",
                multi, set_json=["civo.nodeSelector={}"])
    r.must_fail("several backends whose node selectors can pick one node", r"could both pick one node",
                multi, set_json=['civo.nodeSelector={"pool":"civo"}'])
    r.must_fail("several backends, created Secret without the civo key", r"/credentials/civoApiKey",
                sets=["backend=cloudscale", "backends={civo}", "credentials.create=true",
                      f"credentials.cloudscaleAccessToken={SECRET_VALUE}", "civo.region=FRA1", "civo.clusterId=c",
                      "cloudscale.nodeSelector.c=cloudscale", "civo.nodeSelector.c=civo"])
    r.must_fail("several backends, civo without region", r"/civo/region", multi, sets=["civo.region="])
    r.must_fail("StorageClass of a backend that is not served", r'"x" names backend packet, which this release does not serve',
                multi, set_json=['storageClasses=[{"name":"x","backend":"packet"}]'])
    r.must_fail("unknown backend in backends", r"/backends/0", sets=["backends={nfs}"])

    # Bad values must not render.
    r.must_fail("unknown backend", r"/backend.*one of", sets=["backend=nfs"])
    r.must_fail("snapshot metadata on cloudscale", r"cloudscale backend cannot tell which blocks",
                sets=["backend=cloudscale", "credentials.existingSecret=s", "snapshotMetadata.enabled=true",
                      "snapshotMetadata.tls.existingSecret=t", "snapshotMetadata.tls.caCert=x"])
    r.must_fail("snapshot metadata without TLS", r"give exactly one of tls.existingSecret",
                sets=["snapshotMetadata.enabled=true", "snapshotMetadata.tls.caCert=x"])
    r.must_fail("snapshot metadata with two TLS sources", r"give exactly one of tls.existingSecret",
                sets=["snapshotMetadata.enabled=true", "snapshotMetadata.tls.caCert=x", "snapshotMetadata.tls.existingSecret=t",
                      "snapshotMetadata.tls.certManager.enabled=true", "snapshotMetadata.tls.certManager.issuerRef.name=i"])
    r.must_fail("snapshot metadata without the CA", r"tls.caCert: give the PEM",
                sets=["snapshotMetadata.enabled=true", "snapshotMetadata.tls.existingSecret=t"])
    r.must_fail("cert-manager without an issuer", r"issuerRef.name: name the cert-manager",
                sets=["snapshotMetadata.enabled=true", "snapshotMetadata.tls.caCert=x", "snapshotMetadata.tls.certManager.enabled=true"])
    r.must_fail("misspelt snapshotMetadata key", r"/snapshotMetadata.*additional properties .enable. not allowed",
                sets=["snapshotMetadata.enable=true"])
    r.must_fail("StorageClass without a name", r"/storageClasses/0.*missing property .name.", set_json=['storageClasses=[{"parameters":{"a":"b"}}]'])
    r.must_fail("StorageClass with reclaimPolicy Recycle", r"/storageClasses/0/reclaimPolicy",
                set_json=['storageClasses=[{"name":"x","reclaimPolicy":"Recycle"}]'])
    r.must_fail("StorageClass with an unknown field", r"/storageClasses/0.*additional properties .reclaimpolicy.",
                set_json=['storageClasses=[{"name":"x","reclaimpolicy":"Delete"}]'])
    r.must_fail("StorageClass parameter that is not a string", r"/storageClasses/0/parameters/multicsi.io~1luks-key-size.*string",
                set_json=['storageClasses=[{"name":"x","parameters":{"multicsi.io/luks-key-size":512}}]'])
    r.must_fail("StorageClass with an invalid name", r"/storageClasses/0/name", set_json=['storageClasses=[{"name":"Fast_SSD"}]'])
    r.must_fail("two StorageClasses with one name", r"appears twice",
                set_json=['storageClasses=[{"name":"x"},{"name":"x"}]'])
    r.must_fail("StorageClass with fsType ntfs", r"/storageClasses/0/fsType", set_json=['storageClasses=[{"name":"x","fsType":"ntfs"}]'])
    r.must_fail("LUKS key size 1024", r"/storageClasses/0/luks/keySize", set_json=['storageClasses=[{"name":"x","luks":{"enabled":true,"keySize":1024}}]'])
    r.must_fail("cloudscale without credentials", r"/credentials/cloudscaleAccessToken", sets=["backend=cloudscale"])
    r.must_fail("cloudscale with create but no token", r"/credentials/cloudscaleAccessToken",
                sets=["backend=cloudscale", "credentials.create=true"])
    r.must_fail("civo without credentials", r"/credentials/civoApiKey",
                sets=["backend=civo", "civo.region=LON1", "civo.clusterId=c"])
    r.must_fail("civo without region", r"/civo/region", sets=["backend=civo", "credentials.existingSecret=s"])
    r.must_fail("packet without projectId", r"/packet/projectId", sets=["backend=packet", "credentials.existingSecret=s"])
    r.must_fail("both existingSecret and create", r"/credentials.*'not' failed",
                sets=["backend=cloudscale", "credentials.existingSecret=s", "credentials.create=true",
                      "credentials.cloudscaleAccessToken=t"])
    r.must_fail("misspelt top-level key", r"additional properties .replica. not allowed", sets=["replica=3"])
    r.must_fail("misspelt controller key", r"/controller.*additional properties .replica. not allowed",
                sets=["controller.replica=3"])
    r.must_fail("invalid driver name", r"/driverName", sets=["driverName=Multi_CSI"])
    r.must_fail("relative kubeletDir", r"/kubeletDir", sets=["kubeletDir=var/lib/kubelet"])
    r.must_fail("VolumeSnapshotClass deletionPolicy Keep", r"/volumeSnapshotClass/deletionPolicy", sets=["volumeSnapshotClass.deletionPolicy=Keep"])
    r.must_fail("VolumeGroupSnapshotClass deletionPolicy Keep", r"/volumeGroupSnapshotClass/deletionPolicy",
                sets=["volumeGroupSnapshotClass.deletionPolicy=Keep"])
    r.must_fail("log format yaml", r"/log/format", sets=["log.format=yaml"])
    r.must_fail("sidecar timeout without a unit", r"/sidecars/provisioner/timeout", sets=["sidecars.provisioner.timeout=60"])
    r.must_fail("Kubernetes 1.33 (below kubeVersion: csi-provisioner v6 needs 1.34)", r"kubeVersion|incompatible",
                extra=["--kube-version", "1.33.5"])
    for v in r.versions:
        r.check(f"[kubeVersion] Kubernetes {v} accepted", lambda v=v: ensure(
            r.template(extra=["--kube-version", v]).returncode == 0, f"{v} refused"))
    r.must_fail("node plugin surging a second pod onto a host", r"maxSurge must be 0",
                set_json=['node.updateStrategy={"type":"RollingUpdate","rollingUpdate":{"maxSurge":1,"maxUnavailable":0}}'])
    r.must_fail("alert error ratio above 1", r"/metrics/prometheusRule/rpcErrorRatio",
                sets=["metrics.prometheusRule.rpcErrorRatio=5"])
    r.must_fail("throttling duration without a unit", r"/metrics/prometheusRule/throttledFor",
                sets=["metrics.prometheusRule.throttledFor=600"])
    r.must_fail("misspelt dashboard key", r"/metrics/dashboard.*additional properties .enable. not allowed",
                sets=["metrics.dashboard.enable=true"])
    r.must_fail("zero controller replicas", r"/controller/replicas", sets=["controller.replicas=0"])

    def dockerfile_builds_default_image():
        root = os.path.dirname(os.path.abspath(o.chart.rstrip("/")))
        root = os.path.dirname(root)
        docker = open(os.path.join(root, "Dockerfile")).read()
        chart = yaml.safe_load(open(os.path.join(o.chart, "Chart.yaml")))
        values = yaml.safe_load(open(os.path.join(o.chart, "values.yaml")))
        version = re.search(r"^ARG VERSION=(\S+)$", docker, re.M)
        ensure(version and version.group(1) == chart["appVersion"],
               f"Dockerfile VERSION {version and version.group(1)} is not the chart's appVersion {chart['appVersion']}")
        ensure(values["image"]["tag"] in ("", chart["appVersion"]), "values image.tag differs from appVersion")
        ensure(re.search(r"cargo build --release --locked", docker), "the build stage does not build the locked release")
        ensure(re.search(r"COPY --from=build /out/multicsi /out/multicsi-luks /usr/local/bin/", docker),
               "binaries not copied: multicsi and the multicsi-luks helper it runs go to /usr/local/bin")
        for binary in ("multicsi", "multicsi-luks"):
            ensure(re.search(rf"install -D -m 0755 target/release/{binary} /out/{binary}\b", docker),
                   f"the build stage does not install {binary}")
        ensure('ENTRYPOINT ["/usr/local/bin/multicsi"]' in docker, "entrypoint")
        runtime = docker.split("FROM debian:bookworm-slim", 1)[-1]
        # The runtime stage installs the package list's `node` job.
        ensure("COPY scripts/lib/packages.tsv" in runtime and '$i == "node"' in runtime,
               "the runtime stage does not install the package list's node job")
        node_packages = set()
        with open(os.path.join(root, "scripts", "lib", "packages.tsv")) as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 3 and "node" in fields[2:]:
                    node_packages.add(fields[1])
        for pkg in ("e2fsprogs", "xfsprogs", "btrfs-progs", "mount", "cryptsetup-bin", "libcryptsetup12",
                    "open-iscsi", "multipath-tools", "kmod", "udev", "ca-certificates"):
            ensure(pkg in node_packages, f"the node image lacks {pkg}")
        ensure(re.search(r"^FROM debian:bookworm-slim$", docker, re.M), "runtime base has no shell for the helm test pod")
    r.check("[image] the Dockerfile builds the image the chart defaults to (appVersion, binary, node tools)",
            dockerfile_builds_default_image)

    check_examples(r)

    for f in r.failures:
        print(f"failed: {f}")
    print(f"{r.passed} passed, {r.failed} failed")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
