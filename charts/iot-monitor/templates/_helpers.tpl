{{/* Chart name. */}}
{{- define "iot-monitor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, unless the release already contains the chart name. */}}
{{- define "iot-monitor.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "iot-monitor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels; call with (dict "ctx" $ "component" "consumer"). */}}
{{- define "iot-monitor.labels" -}}
helm.sh/chart: {{ include "iot-monitor.chart" .ctx }}
{{ include "iot-monitor.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: iot-monitor
{{- end }}

{{- define "iot-monitor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "iot-monitor.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Resource name of a component: <fullname>-<component>. */}}
{{- define "iot-monitor.componentName" -}}
{{- printf "%s-%s" (include "iot-monitor.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "iot-monitor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "iot-monitor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference of a component; call with (dict "ctx" $ "svc" .Values.consumer). */}}
{{- define "iot-monitor.image" -}}
{{- $tag := .svc.image.tag | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion }}
{{- if .ctx.Values.image.registry }}
{{- printf "%s/%s:%s" (trimSuffix "/" .ctx.Values.image.registry) .svc.image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .svc.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "iot-monitor.kafkaBootstrap" -}}
{{- .Values.kafka.bootstrapServers | default (printf "%s-kafka-bootstrap:9092" .Values.kafka.clusterName) }}
{{- end }}

{{/*
The Secret holding the service roles' passwords: the user's, or the one the chart generates.
*/}}
{{- define "iot-monitor.rolesSecret" -}}
{{- if .Values.postgresql.serviceRoles.existingSecret -}}
{{- .Values.postgresql.serviceRoles.existingSecret -}}
{{- else if .Values.migrations.enabled -}}
{{- printf "%s-db-roles" (include "iot-monitor.fullname" .) -}}
{{- else -}}
{{- fail "migrations.enabled=false: set postgresql.serviceRoles.existingSecret (the service roles' passwords) - the chart generates that Secret only with its migration Job" -}}
{{- end -}}
{{- end }}

{{/*
A service's own PostgreSQL role, as the arguments of iot-monitor.env: (dict "ctx" $ "role" .Values.consumer.postgresql).
*/}}
{{- define "iot-monitor.roleArgs" -}}
postgresUser: {{ .role.username | quote }}
postgresSecret: {{ .role.existingSecret | default (include "iot-monitor.rolesSecret" .ctx) | quote }}
postgresKey: {{ .role.passwordKey | quote }}
{{- end }}

{{/*
Secrets by reference (settings come from the ConfigMap). Call with (dict "ctx" $ "postgres" true);
a workload that never talks to PostgreSQL (the producer) passes "postgres" false and needs no
PostgreSQL Secret; one with a role of its own passes "postgresUser", "postgresSecret", "postgresKey".
*/}}
{{- define "iot-monitor.env" -}}
{{- $v := .ctx.Values }}
{{- if .postgres }}
{{- with .postgresUser }}
- name: POSTGRES_USER
  value: {{ . | quote }}
{{- end }}
- name: POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .postgresSecret | default $v.postgresql.existingSecret }}
      key: {{ .postgresKey | default $v.postgresql.passwordKey }}
{{- if $v.postgresql.caSecret }}
# libpq reads the CA for sslmode verify-ca / verify-full from here.
- name: PGSSLROOTCERT
  value: {{ printf "/etc/postgres-ca/%s" $v.postgresql.caKey | quote }}
{{- end }}
{{- end }}
{{- if $v.kafka.sasl.existingSecret }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $v.kafka.sasl.existingSecret }}
      key: {{ $v.kafka.sasl.passwordKey }}
{{- end }}
{{- end }}

{{- define "iot-monitor.envFrom" -}}
- configMapRef:
    name: {{ include "iot-monitor.fullname" . }}
{{- end }}

{{/* Volumes every pod gets: a writable /tmp (the root file system is read-only), the Kafka CA,
and the PostgreSQL CA where the pod talks to PostgreSQL. Same arguments as iot-monitor.env. */}}
{{- define "iot-monitor.volumes" -}}
{{- $v := .ctx.Values }}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- if $v.kafka.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ $v.kafka.caSecret }}
{{- end }}
{{- if and .postgres $v.postgresql.caSecret }}
- name: postgres-ca
  secret:
    secretName: {{ $v.postgresql.caSecret }}
{{- end }}
{{- end }}

{{- define "iot-monitor.volumeMounts" -}}
{{- $v := .ctx.Values }}
- name: tmp
  mountPath: /tmp
{{- if $v.kafka.caSecret }}
- name: kafka-ca
  mountPath: /etc/kafka-ca
  readOnly: true
{{- end }}
{{- if and .postgres $v.postgresql.caSecret }}
- name: postgres-ca
  mountPath: /etc/postgres-ca
  readOnly: true
{{- end }}
{{- end }}

{{/* The probes of our own services: /healthz (the loop turns) and /readyz (it can do its work). */}}
{{- define "iot-monitor.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: metrics}
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: metrics}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end }}
