#!/usr/bin/env python3
"""Offline checks of the multicsi Helm chart and the example manifests.

Called by scripts/chart-test.sh, which provides helm and a Python environment
with kubernetes-validate. Every check prints one line; the last line is the
summary "N passed, M failed". Exit status 1 when anything failed.

What is checked:
  * helm lint --strict, with the defaults and with every examples/values-*.yaml;
  * helm template of every example and of each switch on and off;
  * every rendered object against the Kubernetes OpenAPI schemas of several
    Kubernetes versions (kubernetes-validate, strict: unknown fields fail);
    custom resources have no schema there, so they are checked on purpose:
    VolumeSnapshotClass and VolumeSnapshot against the CRD schemas the chart
    itself ships, ServiceMonitor structurally against the rendered Services;
    any other kind without a schema fails;
  * what the workloads carry (containers, args, env, mounts, host access) per
    backend, RBAC scope, StorageClasses, snapshot objects, credentials handling;
  * values.schema.json and the chart's own checks reject bad values: each bad
    input must fail to render, for the expected reason;
  * the manifests in examples/.
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
NAMESPACE = "kube-system"
SIDECAR_REGISTRY = "registry.k8s.io/sig-storage/"
CUSTOM_KINDS = {
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"),
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshot"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
SECRET_VALUE = "s3cr3t-token-value-for-tests"


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

    def template(self, values_files=(), sets=(), set_json=(), release=RELEASE, extra=()):
        args = ["template", release, self.chart, "--namespace", NAMESPACE, *extra]
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

    def capture_crd_schemas(self, docs):
        for d in docs:
            if d["kind"] == "CustomResourceDefinition":
                version = next(v for v in d["spec"]["versions"] if v["name"] == "v1")
                self.crd_schemas[d["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
        ensure(set(self.crd_schemas) == {"VolumeSnapshot", "VolumeSnapshotContent", "VolumeSnapshotClass"},
               f"CRDs rendered: {sorted(self.crd_schemas)}")

    # ------------------------------------------------------------- scenarios
    def scenario(self, name, values_files=(), sets=(), set_json=(), asserts=(), release=RELEASE):
        """Render once; check it renders, validates and satisfies the assertions."""
        res = self.template(values_files, sets, set_json, release=release)
        docs = []

        def renders():
            ensure(res.returncode == 0, f"helm template failed: {res.stderr.strip()[:400]}")
            docs.extend(d for d in yaml.safe_load_all(res.stdout) if d)
            ensure(docs, "nothing rendered")
        if not self.check(f"[{name}] renders", renders):
            return None
        for v in self.versions:
            self.check(f"[{name}] valid against Kubernetes {v} (strict)", self.validate_core, docs, v)
        self.check(f"[{name}] custom resources valid", self.validate_custom, docs)
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


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, name_suffix=None):
    found = [d for d in by_kind(docs, kind) if name_suffix is None or d["metadata"]["name"].endswith(name_suffix)]
    ensure(len(found) == 1, f"expected one {kind}{' *' + name_suffix if name_suffix else ''}, found {len(found)}")
    return found[0]


def get_controller(docs):
    found = [d for d in by_kind(docs, "Deployment")
             if d["metadata"]["labels"].get("app.kubernetes.io/component") == "controller"]
    ensure(len(found) == 1, f"expected one controller Deployment, found {len(found)}")
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
    ensure(len(targets) == 2, f"ServiceMonitor selects {len(targets)} Services, expected controller and node metrics")
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
def a_csidriver(docs):
    """CSIDriver: attachRequired, no pod info, fsGroupPolicy File, Persistent only"""
    d = one(docs, "CSIDriver")
    ensure(d["metadata"]["name"] == "multicsi.io", d["metadata"]["name"])
    ensure(d["spec"] == {"attachRequired": True, "podInfoOnMount": False, "fsGroupPolicy": "File",
                         "storageCapacity": False, "volumeLifecycleModes": ["Persistent"]}, str(d["spec"]))


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
        for flag in ("--feature-gates=Topology=true", "--default-fstype=ext4", "--extra-create-metadata"):
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
    ensure(set(cs) == {"multicsi", "node-driver-registrar", "liveness-probe"}, f"containers {sorted(cs)}")
    ensure(cs["multicsi"]["securityContext"]["privileged"] is True, "driver not privileged")
    ensure(not spec.get("hostPID"), "hostPID must be off")
    args = cs["multicsi"]["args"]
    ensure(args[:3] == ["serve", "--mode=node", "--endpoint=unix:///csi/csi.sock"], f"args {args}")
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
        ensure(c.get("livenessProbe") or name == "liveness-probe", f"{name} has no liveness probe")
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


def state_dir_shared(docs):
    """hostpath: state dir /var/lib/multicsi mounted into controller and node"""
    for w in (get_controller(docs), get_node(docs)):
        ensure(mount_for_host_path(w, "multicsi", "/var/lib/multicsi")["mountPath"] == "/var/lib/multicsi",
               f"{w['kind']} state dir")


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


def snapshot_objects(present, crds=True, ctrl=True):
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
        ensure(len(crd) == (3 if crds else 0), f"{len(crd)} CRDs")
        for c in crd:
            ensure(c["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep", "CRD not kept on uninstall")
            ensure(c["metadata"]["annotations"].get("api-approved.kubernetes.io"), "protected group needs approval annotation")
        ensure(len(ctrl_docs) == (1 if ctrl else 0), f"{len(ctrl_docs)} snapshot controllers")
        if ctrl:
            c = containers(ctrl_docs[0])["snapshot-controller"]
            ensure(c["image"].startswith(SIDECAR_REGISTRY + "snapshot-controller:v8."), c["image"])
            ensure("--leader-election=true" in c["args"], "snapshot-controller leader election")
    state = "present" if present else "absent"
    a.__doc__ = f"snapshot objects {state}" + ("" if not present else f" (CRDs {'on' if crds else 'off'}, controller {'on' if ctrl else 'off'})")
    return a


def rbac_scoped(docs):
    """RBAC: one ServiceAccount per component, least privilege, leases only namespaced"""
    sas = {d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")}
    ensure({"multicsi-controller", "multicsi-node"} <= sas, f"service accounts {sorted(sas)}")
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
    """metrics Services for controller and node on port 9820 named metrics; PDB for the controller"""
    svcs = {d["metadata"]["name"]: d for d in by_kind(docs, "Service")}
    ensure(set(svcs) == {"multicsi-controller-metrics", "multicsi-node-metrics"}, f"services {sorted(svcs)}")
    for s in svcs.values():
        ensure(s["spec"]["ports"] == [{"name": "metrics", "port": 9820, "targetPort": "metrics", "protocol": "TCP"}],
               str(s["spec"]["ports"]))
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


def plain_env(container_env):
    def a(docs):
        for w in (get_controller(docs), get_node(docs)):
            env = env_of(containers(w)["multicsi"])
            for k, v in container_env.items():
                ensure(env.get(k, {}).get("value") == v, f"{w['kind']} {k}={env.get(k)}")
    a.__doc__ = "plain settings " + ", ".join(f"{k}={v}" for k, v in container_env.items())
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
            "csi-provisioner": SIDECAR_REGISTRY + "csi-provisioner:v5.",
            "csi-attacher": SIDECAR_REGISTRY + "csi-attacher:v4.",
            "csi-resizer": SIDECAR_REGISTRY + "csi-resizer:v1.",
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
    ensure(cs["csi-provisioner"]["image"] == "mirror.example/csi-provisioner:v5.3.0", cs["csi-provisioner"]["image"])


# ================================================================= examples
def check_examples(r: Runner):
    manifests = sorted(p for p in glob.glob(os.path.join(r.examples, "*.yaml"))
                       if not os.path.basename(p).startswith("values-"))
    wanted = {"pvc-pod.yaml", "luks-pvc.yaml", "snapshot.yaml", "restore.yaml", "expand.yaml", "raw-block.yaml"}
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
        pvc, secret, sc = doc("luks-pvc.yaml", "PersistentVolumeClaim"), doc("luks-pvc.yaml", "Secret"), doc("luks-pvc.yaml", "StorageClass")
        ensure(secret["metadata"]["name"] == pvc["metadata"]["name"] + "-luks-key", "key Secret name")
        ensure("luksKey" in secret.get("stringData", secret.get("data", {})), "key luksKey")
        ensure(pvc["spec"]["storageClassName"] == sc["metadata"]["name"], "claim uses the LUKS class")
        ensure(sc["parameters"]["csi.storage.k8s.io/node-stage-secret-name"] == "${pvc.name}-luks-key", "secret template")
    r.check("[examples] luks-pvc.yaml: Secret <pvc>-luks-key with luksKey, LUKS class", luks)

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
    ap.add_argument("--k8s", default="1.28.0,1.30.0,1.33.0")
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
    for name, files in [("defaults", [])] + [(os.path.basename(ex(b)), [ex(b)]) for b in ("hostpath", "cloudscale", "civo", "packet")]:
        def lint(files=files):
            args = ["lint", "--strict", o.chart, "--namespace", NAMESPACE]
            for f in files:
                args += ["-f", f]
            res = r.run_helm(*args)
            ensure(res.returncode == 0, (res.stdout + res.stderr).strip()[-400:])
        r.check(f"[lint] helm lint --strict {name}", lint)

    # The CRD schemas the chart ships are what custom resources are checked against.
    def crds():
        res = r.template()
        ensure(res.returncode == 0, res.stderr.strip()[:400])
        r.capture_crd_schemas([d for d in yaml.safe_load_all(res.stdout) if d])
    r.check("[crds] snapshot CRD schemas rendered by default", crds)

    r.scenario("defaults (hostpath)", asserts=[
        a_csidriver, controller_shape(True), driver_env, node_common, node_not_host_network, state_dir_shared,
        storage_classes({"multicsi-hostpath": {}}, "multicsi-hostpath"), snapshot_objects(True), rbac_scoped,
        metrics_services, observability_off, no_credentials_needed, no_config, image_versions, no_civo_statsd])

    r.scenario("values-hostpath.yaml", [ex("hostpath")], asserts=[
        controller_shape(True), node_common, node_not_host_network, state_dir_shared, snapshot_objects(True),
        storage_classes({"multicsi-hostpath": {}, "multicsi-hostpath-xfs": {"csi.storage.k8s.io/fstype": "xfs"},
                         "multicsi-hostpath-luks": LUKS()}, "multicsi-hostpath")])
    r.scenario("values-cloudscale.yaml", [ex("cloudscale")], asserts=[
        controller_shape(True), driver_env, node_common, node_not_host_network, node_state_dir_only, snapshot_objects(True),
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
    r.scenario("snapshots off", sets=["snapshots.enabled=false"], asserts=[
        controller_shape(False), snapshot_objects(False)])
    r.scenario("snapshot CRDs off", sets=["snapshotCRDs.enabled=false"], asserts=[
        controller_shape(True), snapshot_objects(True, crds=False)])
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

    # Bad values must not render.
    r.must_fail("unknown backend", r"/backend.*one of", sets=["backend=nfs"])
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
    r.must_fail("log format yaml", r"/log/format", sets=["log.format=yaml"])
    r.must_fail("sidecar timeout without a unit", r"/sidecars/provisioner/timeout", sets=["sidecars.provisioner.timeout=60"])
    r.must_fail("Kubernetes 1.27 (below kubeVersion)", r"kubeVersion|incompatible", extra=["--kube-version", "1.27.16"])
    r.check("[kubeVersion] Kubernetes 1.28 accepted", lambda: ensure(
        r.template(extra=["--kube-version", "1.28.0"]).returncode == 0, "1.28 refused"))
    r.must_fail("alert error ratio above 1", r"/metrics/prometheusRule/rpcErrorRatio",
                sets=["metrics.prometheusRule.rpcErrorRatio=5"])
    r.must_fail("throttling duration without a unit", r"/metrics/prometheusRule/throttledFor",
                sets=["metrics.prometheusRule.throttledFor=600"])
    r.must_fail("misspelt dashboard key", r"/metrics/dashboard.*additional properties .enable. not allowed",
                sets=["metrics.dashboard.enable=true"])
    r.must_fail("zero controller replicas", r"/controller/replicas", sets=["controller.replicas=0"])

    check_examples(r)

    for f in r.failures:
        print(f"failed: {f}")
    print(f"{r.passed} passed, {r.failed} failed")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
