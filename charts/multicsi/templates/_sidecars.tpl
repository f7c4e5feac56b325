{{/*
The CSI sidecars that drive the controller service, as a list of containers.
Rendered into the controller Deployment (cloud backends: one cluster-wide
controller, every sidecar with leader election) or into the node DaemonSet
(hostpath: each host's driver owns that host's volumes; csi-provisioner and
csi-snapshotter run in node-deployment mode and only act for volumes of their
own node; csi-attacher and csi-resizer have no such mode in their releases
and elect a leader). Include with (dict "ctx" $ "local" "true"|"").
*/}}
{{- define "multicsi.controllerSidecars" -}}
{{- $ctx := .ctx -}}
{{- $local := .local -}}
{{- $sc := $ctx.Values.sidecars -}}
{{- $capacity := include "multicsi.storageCapacity" $ctx -}}
- name: csi-provisioner
  image: {{ include "multicsi.sidecarImage" $sc.provisioner.image }}
  imagePullPolicy: {{ $sc.provisioner.image.pullPolicy }}
  args:
    - --csi-address=/csi/csi.sock
    - --v={{ $sc.provisioner.logLevel }}
    - --timeout={{ $sc.provisioner.timeout }}
    - --default-fstype=ext4
    - --extra-create-metadata
    {{- if $local }}
    # Only claims whose selected node is this node; topology from this node only.
    - --node-deployment
    - --strict-topology
    - --immediate-topology=false
    {{- else }}
    {{- include "multicsi.leaderElectionArgs" . | nindent 4 }}
    {{- end }}
    {{- if $capacity }}
    # CSIStorageCapacity objects from GetCapacity, owned by the {{ if $local }}DaemonSet{{ else }}Deployment{{ end }}.
    - --enable-capacity
    - --capacity-ownerref-level={{ if $local }}1{{ else }}2{{ end }}
    {{- end }}
    {{- range $sc.provisioner.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    {{- if $local }}
    - name: NODE_NAME
      valueFrom:
        fieldRef:
          fieldPath: spec.nodeName
    {{- end }}
    {{- if $capacity }}
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    {{- end }}
    {{- with $sc.provisioner.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  volumeMounts:
    - name: socket-dir
      mountPath: /csi
  securityContext:
    {{- include "multicsi.sidecarSecurityContext" . | nindent 4 }}
  {{- with $sc.provisioner.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- range $name, $key := dict "csi-attacher" "attacher" "csi-resizer" "resizer" }}
{{- $v := index $sc $key }}
- name: {{ $name }}
  image: {{ include "multicsi.sidecarImage" $v.image }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args:
    - --csi-address=/csi/csi.sock
    - --v={{ $v.logLevel }}
    - --timeout={{ $v.timeout }}
    {{- include "multicsi.leaderElectionArgs" . | nindent 4 }}
    {{- range $v.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  volumeMounts:
    - name: socket-dir
      mountPath: /csi
  securityContext:
    {{- include "multicsi.sidecarSecurityContext" . | nindent 4 }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- if include "multicsi.snapshotAPI" $ctx }}
- name: csi-snapshotter
  image: {{ include "multicsi.sidecarImage" $sc.snapshotter.image }}
  imagePullPolicy: {{ $sc.snapshotter.image.pullPolicy }}
  args:
    - --csi-address=/csi/csi.sock
    - --v={{ $sc.snapshotter.logLevel }}
    - --timeout={{ $sc.snapshotter.timeout }}
    - --extra-create-metadata
    {{- if include "multicsi.groupSnapshots" $ctx }}
    # CreateVolumeGroupSnapshot for VolumeGroupSnapshotContents.
    - --feature-gates=CSIVolumeGroupSnapshot=true
    {{- end }}
    {{- if $local }}
    # Only VolumeSnapshotContents the snapshot controller labelled for this node.
    - --node-deployment
    {{- else }}
    {{- include "multicsi.leaderElectionArgs" . | nindent 4 }}
    {{- end }}
    {{- range $sc.snapshotter.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    {{- if $local }}
    - name: NODE_NAME
      valueFrom:
        fieldRef:
          fieldPath: spec.nodeName
    {{- end }}
    {{- with $sc.snapshotter.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  volumeMounts:
    - name: socket-dir
      mountPath: /csi
  securityContext:
    {{- include "multicsi.sidecarSecurityContext" . | nindent 4 }}
  {{- with $sc.snapshotter.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/*
The livenessprobe sidecar: serves /healthz on the given port by calling the
driver's Probe. Include with (dict "ctx" $ "port" 9808).
*/}}
{{- define "multicsi.livenessSidecar" -}}
{{- $lp := .ctx.Values.sidecars.livenessProbe -}}
- name: liveness-probe
  image: {{ include "multicsi.sidecarImage" $lp.image }}
  imagePullPolicy: {{ $lp.image.pullPolicy }}
  args:
    - --csi-address=/csi/csi.sock
    - --http-endpoint=:{{ .port }}
    - --v={{ $lp.logLevel }}
    {{- range $lp.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  {{- with $lp.extraEnv }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: socket-dir
      mountPath: /csi
  securityContext:
    {{- include "multicsi.sidecarSecurityContext" . | nindent 4 }}
  {{- with $lp.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
