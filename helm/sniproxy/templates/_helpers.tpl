{{/* Names and labels. */}}
{{- define "sniproxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sniproxy.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sniproxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sniproxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sniproxy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "sniproxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The listeners: name, protocol, container port, Service port. */}}
{{- define "sniproxy.listenerTable" -}}
imap: {protocol: imap, containerPort: 1143, port: 143}
submission: {protocol: smtp, containerPort: 1587, port: 587}
imaps: {protocol: imaps, containerPort: 1993, port: 993}
smtps: {protocol: smtps, containerPort: 1465, port: 465}
https: {protocol: https, containerPort: 1443, port: 443}
{{- end -}}

{{- define "sniproxy.tlsSecret" -}}
{{- $ctx := index . 0 -}}{{- $flow := index . 1 -}}
{{- $v := ternary $ctx.Values.tls.server2bis $ctx.Values.tls.serverIgcsante (eq $flow "2bis") -}}
{{- $v.existingSecret | default (printf "%s-tls-%s" (include "sniproxy.fullname" $ctx) $flow) -}}
{{- end -}}

{{- define "sniproxy.trustConfigMap" -}}
{{- .Values.trust.existingConfigMap | default (printf "%s-trust" (include "sniproxy.fullname" .)) -}}
{{- end -}}

{{- define "sniproxy.secretsName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "sniproxy.fullname" .)) -}}
{{- end -}}

{{/* Paths inside the pod (docs/kubernetes.md, "What the pod looks like"). */}}
{{- define "sniproxy.paths" -}}
config: /etc/sniproxy
trust: /etc/sniproxy-trust
tls: /etc/sniproxy-tls
secrets: /etc/sniproxy-secrets
state: /var/lib/sniproxy
{{- end -}}
