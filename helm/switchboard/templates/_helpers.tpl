{{/* Names, labels and the pieces every Switchboard pod shares. */}}

{{- define "sb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sb.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels selecting one component: (dict "root" $ "component" "edge") */}}
{{- define "sb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sb.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sb.labels" -}}
{{ include "sb.selectorLabels" . }}
app.kubernetes.io/part-of: switchboard
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of the release's pods regardless of component (NetworkPolicy peers). */}}
{{- define "sb.instanceLabels" -}}
app.kubernetes.io/name: {{ include "sb.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* Image of a component: (dict "root" $ "image" .Values.x.image "name" "edge-ws") */}}
{{- define "sb.image" -}}
{{- $repo := .image.repository | default (printf "%s/%s" .root.Values.image.repository .name) -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{- define "sb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sb.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "sb.dbSecretName" -}}
{{- .Values.database.existingSecret | default (printf "%s-database" (include "sb.fullname" .)) -}}
{{- end -}}

{{/* Pod-level fields every Switchboard pod shares (indented by the caller). Service links are
off: Kubernetes would otherwise inject `<SERVICE>_PORT`-style variables, and with a release named
`switchboard` those start with `SWITCHBOARD_`, which the binaries' settings refuse as unknown keys. */}}
{{- define "sb.podCommon" -}}
{{- include "sb.podCommonWith" (dict "root" . "serviceAccount" (include "sb.serviceAccountName" .)) }}
{{- end -}}

{{- define "sb.podCommonWith" -}}
{{- $sa := .serviceAccount -}}
{{- with .root -}}
serviceAccountName: {{ $sa }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podDefaults.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podDefaults.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podDefaults.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podDefaults.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Topology spread constraints with the component's selector: (dict "root" $ "component" c "spread" list) */}}
{{- define "sb.topologySpread" -}}
{{- if .spread }}
topologySpreadConstraints:
{{- range .spread }}
  - {{- toYaml . | nindent 4 }}
    labelSelector:
      matchLabels:
        {{- include "sb.selectorLabels" (dict "root" $.root "component" $.component) | nindent 8 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Environment of every app container. */}}
{{- define "sb.commonEnv" -}}
- name: RUST_LOG
  value: {{ .Values.podDefaults.logLevel | quote }}
# glibc returns Argon2's 19 MiB buffers to the kernel (docs/operations.md)
- name: MALLOC_MMAP_THRESHOLD_
  value: "1048576"
{{- with .Values.podDefaults.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "sb.dbPasswordEnv" -}}
- name: SWITCHBOARD_DATABASE__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "sb.dbSecretName" . }}
      key: {{ .Values.database.existingSecretKey }}
{{- end -}}

{{- define "sb.redisEnv" -}}
{{- if .Values.redis.existingSecret }}
- name: SWITCHBOARD_REDIS__NODES
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- end }}
{{- end -}}

{{/* Liveness, readiness and startup probes on a health port: (dict "port" "metrics") */}}
{{- define "sb.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 2
  failureThreshold: 60
livenessProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: {{ .port }}}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}

{{/* Volumes: the config and a writable /tmp. */}}
{{- define "sb.volumes" -}}
volumes:
  - name: config
    configMap:
      name: {{ include "sb.fullname" . }}-config
  - name: tmp
    emptyDir:
      sizeLimit: 64Mi
{{- end -}}

{{- define "sb.volumeMounts" -}}
volumeMounts:
  - name: config
    mountPath: /etc/switchboard
    readOnly: true
  - name: tmp
    mountPath: /tmp
{{- end -}}

{{/* A TOML value: strings quoted (JSON escapes are valid TOML), lists inline, the rest as is. */}}
{{- define "sb.toml" -}}
{{- if kindIs "string" . -}}
{{ toJson . }}
{{- else if kindIs "slice" . -}}
{{ toJson . }}
{{- else if kindIs "float64" . -}}
{{- if eq (float64 (int64 .)) . }}{{ int64 . }}{{ else }}{{ . }}{{ end -}}
{{- else -}}
{{ . }}
{{- end -}}
{{- end -}}

{{/* NetworkPolicy rules. */}}
{{- define "sb.egressDns" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
  {{- with .Values.networkPolicy.dns }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* An egress rule to a dependency: (dict "to" peers "ports" list) */}}
{{- define "sb.egressTo" -}}
- ports:
    {{- range .ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{- /* Egress to the trace collector, only while tracing is on (trace.otlpEndpoint set). */ -}}
{{- define "sb.egressTrace" -}}
{{- if .Values.trace.otlpEndpoint -}}
{{- include "sb.egressTo" .Values.networkPolicy.traceCollector -}}
{{- end -}}
{{- end -}}

{{- define "sb.metricsIngress" -}}
- ports:
    - port: metrics
      protocol: TCP
  {{- with .Values.networkPolicy.metricsFrom }}
  from:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
