{{/*
A long-running service (producer, consumer, dashboard). Call with
(dict "ctx" $ "component" "consumer" "svc" .Values.consumer "args" (list ...) "postgres" true),
optionally "env" (extra variables before the user's extraEnv), "ports" (default: metrics),
"probes" (default: iot-monitor.probes), "postgresUser"/"postgresSecret"/"postgresKey" (a role
of its own), "extraVolumes"/"extraVolumeMounts".
*/}}
{{- define "iot-monitor.deployment" -}}
{{- $ctx := .ctx -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "iot-monitor.componentName" . }}
  labels:
    {{- include "iot-monitor.labels" . | nindent 4 }}
spec:
  replicas: {{ .svc.replicaCount }}
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      {{- include "iot-monitor.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "iot-monitor.labels" . | nindent 8 }}
      annotations:
        # Roll the pods when the settings change.
        checksum/config: {{ include (print $ctx.Template.BasePath "/configmap.yaml") $ctx | sha256sum }}
        {{- if .extraVolumes }}
        checksum/alert-rules: {{ include (print $ctx.Template.BasePath "/alert-rules.yaml") $ctx | sha256sum }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "iot-monitor.serviceAccountName" $ctx }}
      automountServiceAccountToken: false
      {{- with $ctx.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $ctx.Values.podSecurityContext | nindent 8 }}
      {{- with .svc.terminationGracePeriodSeconds }}
      terminationGracePeriodSeconds: {{ . }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "iot-monitor.image" (dict "ctx" $ctx "svc" .svc) | quote }}
          imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
          {{- with .args }}
          args:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          envFrom:
            {{- include "iot-monitor.envFrom" $ctx | nindent 12 }}
          {{- $secrets := include "iot-monitor.env" . | trim }}
          {{- if or $secrets .env .svc.extraEnv }}
          env:
            {{- with $secrets }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with .svc.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- end }}
          ports:
            {{- if .ports }}
            {{- toYaml .ports | nindent 12 }}
            {{- else }}
            - name: metrics
              containerPort: {{ $ctx.Values.metricsPort }}
              protocol: TCP
            {{- end }}
          {{- if .probes }}
          {{- .probes | nindent 10 }}
          {{- else }}
          {{- include "iot-monitor.probes" $ctx | nindent 10 }}
          {{- end }}
          resources:
            {{- toYaml .svc.resources | nindent 12 }}
          securityContext:
            {{- toYaml $ctx.Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "iot-monitor.volumeMounts" . | nindent 12 }}
            {{- with .extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "iot-monitor.volumes" . | nindent 8 }}
        {{- with .extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with .svc.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .svc.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .svc.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{/* The metrics Service of a component (same arguments). */}}
{{- define "iot-monitor.metricsService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "iot-monitor.componentName" . }}-metrics
  labels:
    {{- include "iot-monitor.labels" . | nindent 4 }}
spec:
  type: {{ .ctx.Values.service.type }}
  selector:
    {{- include "iot-monitor.selectorLabels" . | nindent 4 }}
  ports:
    - name: metrics
      port: {{ .ctx.Values.metricsPort }}
      targetPort: metrics
      protocol: TCP
{{- end }}
