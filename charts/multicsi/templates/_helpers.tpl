{{/* vim: set filetype=mustache: */}}

{{/* Chart name, overridable. */}}
{{- define "multicsi.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Base name of every object: the release name when it already contains the chart
name (helm install multicsi ... -> "multicsi"), "<release>-<chart>" otherwise.
Kept short enough for "-snapshot-controller" suffixes to stay within 63 characters.
*/}}
{{- define "multicsi.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 42 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 42 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 42 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "multicsi.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "multicsi.labels" -}}
helm.sh/chart: {{ include "multicsi.chart" . }}
app.kubernetes.io/name: {{ include "multicsi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: multicsi
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "controller"). */}}
{{- define "multicsi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "multicsi.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of one component's objects. */}}
{{- define "multicsi.componentLabels" -}}
{{ include "multicsi.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Service account names. */}}
{{- define "multicsi.controllerServiceAccount" -}}
{{- if .Values.controller.serviceAccount.create -}}
{{- default (printf "%s-controller" (include "multicsi.fullname" .)) .Values.controller.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.controller.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "multicsi.nodeServiceAccount" -}}
{{- if .Values.node.serviceAccount.create -}}
{{- default (printf "%s-node" (include "multicsi.fullname" .)) .Values.node.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.node.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "multicsi.snapshotControllerServiceAccount" -}}
{{- if .Values.snapshotController.serviceAccount.create -}}
{{- default (printf "%s-snapshot-controller" (include "multicsi.fullname" .)) .Values.snapshotController.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.snapshotController.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Driver image reference. */}}
{{- define "multicsi.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Sidecar image reference from an image block {repository, tag}. */}}
{{- define "multicsi.sidecarImage" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/*
Every backend the release serves, the default (.Values.backend) first, then
the others of .Values.backends, as a JSON list: include ... | fromJsonArray.
*/}}
{{- define "multicsi.backends" -}}
{{- $all := list .Values.backend -}}
{{- range .Values.backends -}}
{{- if not (has . $all) -}}{{- $all = append $all . -}}{{- end -}}
{{- end -}}
{{- toJson $all -}}
{{- end -}}

{{/* "true" when the release serves several backends. */}}
{{- define "multicsi.multiBackend" -}}
{{- if gt (len (include "multicsi.backends" . | fromJsonArray)) 1 -}}true{{- end -}}
{{- end -}}

{{/* "true" when the release serves the backend .name: include with (dict "ctx" $ "name" "civo"). */}}
{{- define "multicsi.serves" -}}
{{- if has .name (include "multicsi.backends" .ctx | fromJsonArray) -}}true{{- end -}}
{{- end -}}

{{/*
"true" when backend .name has snapshots and they are switched on; packet has
none, civo only with civo.volumeSnapshots. Include with (dict "ctx" $ "name" "civo").
*/}}
{{- define "multicsi.backendSnapshots" -}}
{{- $v := .ctx.Values -}}
{{- if and $v.snapshots.enabled (or (ne .name "civo") $v.civo.volumeSnapshots) (ne .name "packet") -}}true{{- end -}}
{{- end -}}

{{/* The served backends that have snapshots, as a JSON list. */}}
{{- define "multicsi.snapshotBackends" -}}
{{- $ctx := . -}}
{{- $with := list -}}
{{- range (include "multicsi.backends" . | fromJsonArray) -}}
{{- if include "multicsi.backendSnapshots" (dict "ctx" $ctx "name" .) -}}{{- $with = append $with . -}}{{- end -}}
{{- end -}}
{{- toJson $with -}}
{{- end -}}

{{/* "true" when a served backend supports snapshots and they are switched on. */}}
{{- define "multicsi.snapshotsEnabled" -}}
{{- if include "multicsi.snapshotBackends" . | fromJsonArray -}}true{{- end -}}
{{- end -}}

{{/*
"true" when the snapshot.storage.k8s.io/v1 API can be used: snapshots are on
and the cluster serves the API. On `helm install` the API is there when the
chart's crds/ were installed first or the cluster already had the CRDs; with
`--skip-crds` on a cluster without them, nothing that needs the API is
rendered and the install still succeeds. `helm template` knows no cluster:
pass `--api-versions snapshot.storage.k8s.io/v1/VolumeSnapshotClass`.
*/}}
{{- define "multicsi.snapshotAPI" -}}
{{- if and (include "multicsi.snapshotsEnabled" .) (.Capabilities.APIVersions.Has "snapshot.storage.k8s.io/v1/VolumeSnapshotClass") -}}true{{- end -}}
{{- end -}}

{{/*
"true" when the controller service runs inside the node plugin pods, one
process per host (hostpath: the host's state directory has exactly one owner,
which also needs the host's /dev and mounts for copies, freezes and loop
devices). The other backends run a separate controller Deployment.
*/}}
{{- define "multicsi.controllerOnNodes" -}}
{{- if eq .Values.backend "hostpath" -}}true{{- end -}}
{{- end -}}

{{/*
"true" when the driver reports capacity per node and the scheduler should use
it (CSIDriver storageCapacity, csi-provisioner --enable-capacity): hostpath,
whose volumes are limited by the free space of the host's state directory.
*/}}
{{- define "multicsi.storageCapacity" -}}
{{- if eq .Values.backend "hostpath" -}}true{{- end -}}
{{- end -}}

{{/* Service account of the pods that run the controller service and its sidecars. */}}
{{- define "multicsi.controllerSidecarsServiceAccount" -}}
{{- if include "multicsi.controllerOnNodes" . -}}
{{- include "multicsi.nodeServiceAccount" . -}}
{{- else -}}
{{- include "multicsi.controllerServiceAccount" . -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the node plugin of backend .name uses the host network (packet,
unless node.hostNetwork says otherwise). Include with (dict "ctx" $ "name" .Values.backend).
*/}}
{{- define "multicsi.nodeHostNetwork" -}}
{{- if kindIs "bool" .ctx.Values.node.hostNetwork -}}
{{- if .ctx.Values.node.hostNetwork -}}true{{- end -}}
{{- else if eq .name "packet" -}}true{{- end -}}
{{- end -}}

{{/*
The node plugin DaemonSets, as YAML {items: [...]}, each {name, backend,
nodeBackends, nodeSelector, selector}. One backend: one DaemonSet
"<fullname>-node" on every node. Several (cloud) backends: a node belongs to
one cloud, whose metadata service tells the node plugin who it is, so each
backend has its own DaemonSet "<fullname>-node-<backend>" on the nodes its
<backend>.nodeSelector picks, serving that backend's node calls only
(--node-backends).
*/}}
{{- define "multicsi.nodePlugins" -}}
{{- $ctx := . -}}
{{- $fullname := include "multicsi.fullname" . -}}
items:
{{- if include "multicsi.multiBackend" . }}
{{- range (include "multicsi.backends" . | fromJsonArray) }}
  - name: {{ printf "%s-node-%s" $fullname . }}
    backend: {{ . }}
    nodeBackends: {{ . }}
    nodeSelector:
      {{- merge (deepCopy (default dict (index $ctx.Values . "nodeSelector"))) (default dict $ctx.Values.node.nodeSelector) | toYaml | nindent 6 }}
    selector:
      multicsi.io/node-backend: {{ . }}
{{- end }}
{{- else }}
  - name: {{ printf "%s-node" $fullname }}
    backend: {{ .Values.backend }}
    nodeBackends: ""
    nodeSelector:
      {{- default dict .Values.node.nodeSelector | toYaml | nindent 6 }}
    selector: {}
{{- end }}
{{- end -}}

{{/* Directory of the node plugin's socket on the host. */}}
{{- define "multicsi.pluginDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.kubeletDir) .Values.driverName -}}
{{- end -}}

{{/* Name of the Secret holding the cloud credentials (empty for hostpath). */}}
{{- define "multicsi.credentialsSecret" -}}
{{- if ne .Values.backend "hostpath" -}}
{{- if .Values.credentials.existingSecret -}}
{{- .Values.credentials.existingSecret -}}
{{- else if .Values.credentials.create -}}
{{- printf "%s-credentials" (include "multicsi.fullname" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The key of backend "." in the credentials Secret (none for hostpath). */}}
{{- define "multicsi.credentialsKey" -}}
{{- get (dict "cloudscale" "CLOUDSCALE_ACCESS_TOKEN" "civo" "CIVO_API_KEY" "packet" "PACKET_API_KEY") . -}}
{{- end -}}

{{/*
Checks the schema cannot express with a helpful message. Rendered from every
workload template so that a bad combination fails early.
*/}}
{{- define "multicsi.validate" -}}
{{- if and (ne .Values.backend "hostpath") (not (include "multicsi.credentialsSecret" .)) -}}
{{- fail (printf "backend %s needs credentials: set credentials.existingSecret to the name of a Secret, or credentials.create=true with the token (see docs/install.md)" .Values.backend) -}}
{{- end -}}
{{- include "multicsi.validateBackends" . -}}
{{- with .Values.node.updateStrategy.rollingUpdate }}
{{- if and (hasKey . "maxSurge") (ne (toString .maxSurge) "0") (ne (toString .maxSurge) "0%") -}}
{{- fail "node.updateStrategy.rollingUpdate.maxSurge must be 0: a surge pod would run a second driver on the host's state directory next to the old one (see docs/install.md, Upgrading)" -}}
{{- end }}
{{- end }}
{{- $names := list -}}
{{- range (include "multicsi.storageClasses" . | fromYaml).items -}}
{{- if has .name $names -}}
{{- fail (printf "storageClasses: the name %q appears twice" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- end -}}

{{/*
Checks of a release with several backends (values.backends): which
combinations one release can run, each with what it needs.
*/}}
{{- define "multicsi.validateBackends" -}}
{{- $backends := include "multicsi.backends" . | fromJsonArray -}}
{{- if gt (len $backends) 1 -}}
{{- if has "hostpath" $backends -}}
{{- fail (printf "backends %s: hostpath cannot share a release with a cloud backend. Its controller runs inside the node plugin on the host that owns the volume images (--mode=all), a cloud backend's controller is one Deployment for the cluster, and both would act on every claim of the one driver name. Install hostpath as a second release with its own driverName and hostpath.stateDir (and snapshotController.enabled=false in one of them; see docs/install.md, Several backends)" (join ", " $backends)) -}}
{{- end -}}
{{- range $backends -}}
{{- if not (index $.Values . "nodeSelector") -}}
{{- fail (printf "backends %s: set %s.nodeSelector to the node labels that pick the %s cloud's nodes. A node belongs to one cloud, so each backend's node plugin runs only on that cloud's nodes (see docs/install.md, Several backends)" (join ", " $backends) . .) -}}
{{- end -}}
{{- end -}}
{{- range $i, $a := $backends -}}
{{- range $b := slice $backends (add1 $i) -}}
{{- $disjoint := false -}}
{{- range $key, $value := index $.Values $a "nodeSelector" -}}
{{- $other := index $.Values $b "nodeSelector" -}}
{{- if and (hasKey $other $key) (ne (toString (index $other $key)) (toString $value)) -}}{{- $disjoint = true -}}{{- end -}}
{{- end -}}
{{- if not $disjoint -}}
{{- fail (printf "%s.nodeSelector and %s.nodeSelector could both pick one node, which would then run two node plugins of one driver: give them a label key in common with different values, e.g. multicsi.io/cloud: %s and multicsi.io/cloud: %s" $a $b $a $b) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range .Values.storageClasses -}}
{{- if and .backend (not (has .backend $backends)) -}}
{{- fail (printf "storageClasses: %q names backend %s, which this release does not serve (%s): add it to backends or pick a served one" .name .backend (join ", " $backends)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Driver settings as environment variables, shared by controller and node.
Include with (dict "ctx" $ "mode" "controller").
*/}}
{{- define "multicsi.driverEnv" -}}
{{- $ctx := .ctx -}}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: MULTICSI_NODE_ID
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: MULTICSI_BACKEND
  value: {{ $ctx.Values.backend | quote }}
- name: MULTICSI_DRIVER_NAME
  value: {{ $ctx.Values.driverName | quote }}
- name: MULTICSI_STATE_DIR
  value: {{ $ctx.Values.hostpath.stateDir | quote }}
- name: MULTICSI_LOG_FORMAT
  value: {{ $ctx.Values.log.format | quote }}
- name: MULTICSI_LOG_LEVEL
  value: {{ $ctx.Values.log.level | quote }}
- name: MULTICSI_METRICS_ADDRESS
  value: {{ printf "0.0.0.0:%d" (int $ctx.Values.metrics.port) | quote }}
{{- if ne .mode "controller" }}
- name: MULTICSI_KUBELET_DIR
  value: {{ trimSuffix "/" $ctx.Values.kubeletDir | quote }}
{{- end }}
{{- $backends := include "multicsi.backends" $ctx | fromJsonArray }}
{{- if has "civo" $backends }}
- name: CIVO_REGION
  value: {{ $ctx.Values.civo.region | quote }}
- name: CIVO_CLUSTER_ID
  value: {{ $ctx.Values.civo.clusterId | quote }}
- name: CIVO_VOLUME_SNAPSHOTS
  value: {{ ternary "true" "false" (eq (include "multicsi.backendSnapshots" (dict "ctx" $ctx "name" "civo")) "true") | quote }}
{{- end }}
{{- if has "packet" $backends }}
- name: PACKET_PROJECT_ID
  value: {{ $ctx.Values.packet.projectId | quote }}
{{- with $ctx.Values.packet.facilityId }}
- name: PACKET_FACILITY_ID
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- if ne .mode "node" }}
{{- $secret := include "multicsi.credentialsSecret" $ctx }}
{{- range $backends }}
{{- $key := include "multicsi.credentialsKey" . }}
{{- if and $secret $key }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Arguments of the driver container. Include with (dict "ctx" $ "mode"
"controller" "extra" list), and "nodeBackends" "civo" for a node plugin that
serves some of the backends only.
*/}}
{{- define "multicsi.driverArgs" -}}
- serve
- --mode={{ .mode }}
- --endpoint=unix:///csi/csi.sock
- --node-id=$(NODE_NAME)
{{- if include "multicsi.multiBackend" .ctx }}
- --backends={{ include "multicsi.backends" .ctx | fromJsonArray | join "," }}
{{- end }}
{{- with .nodeBackends }}
- --node-backends={{ . }}
{{- end }}
{{- if .ctx.Values.config }}
- --config=/etc/multicsi/config.toml
{{- end }}
{{- range .extra }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/* Standard hardening for sidecar containers. */}}
{{- define "multicsi.sidecarSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Leader election arguments shared by every controller sidecar. */}}
{{- define "multicsi.leaderElectionArgs" -}}
- --leader-election
- --leader-election-namespace=$(NAMESPACE)
{{- end -}}

{{/*
StorageClasses to render, as YAML {items: [...]}: the user's list, or when it
is empty the defaults of the backend; with several backends the defaults of
each, marked with their backend (multicsi.io/backend), the default backend's
first class the cluster default.
*/}}
{{- define "multicsi.storageClasses" -}}
{{- if .Values.storageClasses -}}
items:
{{ toYaml .Values.storageClasses | indent 2 }}
{{- else if include "multicsi.multiBackend" . -}}
items:
{{- range $i, $backend := include "multicsi.backends" . | fromJsonArray }}
{{- range (include "multicsi.backendStorageClasses" (dict "Values" (dict "backend" $backend)) | fromYaml).items }}
{{- $_ := set . "backend" $backend }}
{{- if $i }}{{ $_ := unset . "default" }}{{ end }}
  - {{ toYaml . | nindent 4 | trim }}
{{- end }}
{{- end }}
{{- else -}}
{{- include "multicsi.backendStorageClasses" . -}}
{{- end -}}
{{- end -}}

{{/* The default StorageClasses of one backend (.Values.backend), as YAML {items: [...]}. */}}
{{- define "multicsi.backendStorageClasses" -}}
{{- if eq .Values.backend "hostpath" -}}
items:
  - name: multicsi-hostpath
    default: true
{{- else if eq .Values.backend "cloudscale" -}}
items:
  - name: cloudscale-volume-ssd
    default: true
    parameters:
      multicsi.io/volume-type: ssd
  - name: cloudscale-volume-bulk
    parameters:
      multicsi.io/volume-type: bulk
  - name: cloudscale-volume-ssd-luks
    parameters:
      multicsi.io/volume-type: ssd
    luks:
      enabled: true
  - name: cloudscale-volume-bulk-luks
    parameters:
      multicsi.io/volume-type: bulk
    luks:
      enabled: true
{{- else if eq .Values.backend "civo" -}}
items:
  - name: civo-volume
    default: true
{{- else if eq .Values.backend "packet" -}}
items:
  - name: packet-standard
    default: true
    parameters:
      multicsi.io/plan: standard
  - name: packet-performance
    parameters:
      multicsi.io/plan: performance
{{- else -}}
items: []
{{- end -}}
{{- end -}}


{{/* Name of the chart's default StorageClass: the first marked default, else the first. */}}
{{- define "multicsi.defaultStorageClass" -}}
{{- $classes := (include "multicsi.storageClasses" . | fromYaml).items -}}
{{- $name := "" -}}
{{- range $classes }}{{ if and (not $name) .default }}{{ $name = .name }}{{ end }}{{ end -}}
{{- if not $name }}{{ with first $classes }}{{ $name = .name }}{{ end }}{{ end -}}
{{- $name -}}
{{- end -}}
