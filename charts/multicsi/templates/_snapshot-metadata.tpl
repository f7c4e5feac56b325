{{/*
The snapshot-metadata sidecar (changed block tracking): helpers shared by the
node DaemonSet and templates/snapshot-metadata.yaml.
*/}}

{{/* "true" when the sidecar and its objects are rendered. */}}
{{- define "multicsi.snapshotMetadata" -}}
{{- if .Values.snapshotMetadata.enabled -}}true{{- end -}}
{{- end -}}

{{- define "multicsi.snapshotMetadataName" -}}
{{- printf "%s-snapshot-metadata" (include "multicsi.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The kubernetes.io/tls Secret with the sidecar's certificate. */}}
{{- define "multicsi.snapshotMetadataTLSSecret" -}}
{{- with .Values.snapshotMetadata.tls.existingSecret -}}
{{- . -}}
{{- else -}}
{{- printf "%s-tls" (include "multicsi.snapshotMetadataName" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* What the schema cannot say, with what to do. */}}
{{- define "multicsi.validateSnapshotMetadata" -}}
{{- $sm := .Values.snapshotMetadata -}}
{{- if $sm.enabled -}}
{{- if ne .Values.backend "hostpath" -}}
{{- fail (printf "snapshotMetadata.enabled: the %s backend cannot tell which blocks of a snapshot changed (no such API); only hostpath offers snapshot metadata. Set snapshotMetadata.enabled=false" .Values.backend) -}}
{{- end -}}
{{- if not (include "multicsi.snapshotsEnabled" .) -}}
{{- fail "snapshotMetadata.enabled needs snapshots.enabled=true: the metadata is of VolumeSnapshots" -}}
{{- end -}}
{{- if eq (empty $sm.tls.existingSecret) (not $sm.tls.certManager.enabled) -}}
{{- fail "snapshotMetadata.tls: give exactly one of tls.existingSecret (a kubernetes.io/tls Secret you made) and tls.certManager.enabled=true (a Certificate cert-manager issues)" -}}
{{- end -}}
{{- if and $sm.tls.certManager.enabled (not $sm.tls.certManager.issuerRef.name) -}}
{{- fail "snapshotMetadata.tls.certManager.issuerRef.name: name the cert-manager Issuer or ClusterIssuer that signs the sidecar's certificate" -}}
{{- end -}}
{{- if not $sm.tls.caCert -}}
{{- fail "snapshotMetadata.tls.caCert: give the PEM of the CA that signed the sidecar's certificate; backup clients verify the sidecar with it (SnapshotMetadataService spec.caCert)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The sidecar container. Include with the chart's root context. */}}
{{- define "multicsi.snapshotMetadataSidecar" -}}
{{- $sm := .Values.snapshotMetadata -}}
- name: csi-snapshot-metadata
  image: {{ include "multicsi.sidecarImage" $sm.image }}
  imagePullPolicy: {{ $sm.image.pullPolicy }}
  args:
    - --csi-address=/csi/csi.sock
    - --port={{ $sm.port }}
    - --tls-cert=/tls/tls.crt
    - --tls-key=/tls/tls.key
    - --max-streaming-duration-min={{ $sm.maxStreamingDurationMinutes }}
    - --v={{ $sm.logLevel }}
    {{- range $sm.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  {{- with $sm.extraEnv }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: cbt-grpc
      containerPort: {{ $sm.port }}
      protocol: TCP
  volumeMounts:
    - name: socket-dir
      mountPath: /csi
    - name: snapshot-metadata-tls
      mountPath: /tls
      readOnly: true
  securityContext:
    {{- include "multicsi.sidecarSecurityContext" . | nindent 4 }}
  {{- with $sm.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
