{{/*
The sniproxy config (sniproxy.yaml), rendered from .Values.sniproxy. Paths point at the pod's mounts; listeners
bind the container's high ports; the admin endpoint binds the pod IP for the kubelet's probes.
*/}}
{{- define "sniproxy.config" -}}
{{- $p := include "sniproxy.paths" . | fromYaml -}}
{{- $s := .Values.sniproxy -}}
{{- $table := include "sniproxy.listenerTable" . | fromYaml -}}
{{- $mono := eq $s.strategy "mono-flux" -}}
# Rendered by the sniproxy Helm chart ({{ .Chart.Version }}), strategy {{ $s.strategy }}: do not edit in the pod.
profile: {{ $s.profile }}
workers: {{ $s.workers }}
log: {level: {{ $s.log.level }}, format: {{ $s.log.format }}}
state_dir: {{ $p.state }}
secret_files: warn    # Secret volumes with fsGroup are group-readable (mode 0440)
crl: {refresh_max: {{ $s.crl.refreshMax }}, retry_min: {{ $s.crl.retryMin }}, timeout: {{ $s.crl.timeout }}}
admin: {bind: "0.0.0.0:{{ .Values.admin.port }}"}
drain: {timeout: {{ $s.drainTimeout }}}
{{- if eq .Values.configChange "reload" }}
# configChange: reload: the kubelet updates the mounted ConfigMap/Secrets in place; sniproxy polls them and reloads
# (a config that does not load is refused and the running one stays), no connection is closed
reload: {watch: true, interval: {{ .Values.reloadInterval }}}
{{- end }}
{{- with $s.limits }}
limits:
{{- toYaml . | nindent 2 }}
{{- end }}
authorities:
{{- range $name, $a := $s.authorities }}
  {{ $name }}:
    roots: [{{ range $i, $f := $a.roots }}{{ if $i }}, {{ end }}{{ printf "%s/%s" $p.trust $f | quote }}{{ end }}]
    intermediates: [{{ range $i, $f := ($a.intermediates | default list) }}{{ if $i }}, {{ end }}{{ printf "%s/%s" $p.trust $f | quote }}{{ end }}]
    {{- if hasKey $a "test" }}
    test: {{ $a.test }}
    {{- end }}
    {{- if eq $name "igc-sante-standard-pp" }}
    enabled: {{ $s.acceptStandardCards }}
    {{- else if hasKey $a "enabled" }}
    enabled: {{ $a.enabled }}
    {{- end }}
    {{- with $a.crl }}
    crl:
      {{- /* a source without a scheme is a CRL file (PEM) of the trust ConfigMap */}}
      sources: [{{ range $i, $src := (.sources | default list) }}{{ if $i }}, {{ end }}{{ (contains "://" $src | ternary $src (printf "%s/%s" $p.trust $src)) | quote }}{{ end }}]
      from_certificates: {{ .fromCertificates | default false }}
      {{- with .stale }}
      stale: {{ toJson . }}
      {{- end }}
    {{- end }}
{{- end }}
flows:
{{- $authorities := keys $s.authorities | sortAlpha }}
{{- if $mono }}
  mssante:
    # the cutover value: sniproxy.monoFluxCertificate ({{ $s.monoFluxCertificate }})
    certificate: {{ printf "%s/%s/tls.crt" $p.tls $s.monoFluxCertificate }}
    key: {{ printf "%s/%s/tls.key" $p.tls $s.monoFluxCertificate }}
    client_auth: required
    authorities: {{ toJson $authorities }}
{{- else }}
{{- range $flow := list "2bis" "igcsante" }}
  {{ $flow }}:
    certificate: {{ printf "%s/%s/tls.crt" $p.tls $flow }}
    key: {{ printf "%s/%s/tls.key" $p.tls $flow }}
    client_auth: required
    authorities: {{ toJson $authorities }}
{{- end }}
{{- end }}
listeners:
{{- range $name := list "imap" "submission" "imaps" "smtps" "https" }}
{{- $l := index $s.listeners $name }}
{{- $t := index $table $name }}
{{- if $l.enabled }}
  - name: {{ $name }}
    bind: ["0.0.0.0:{{ $t.containerPort }}"]
    protocol: {{ $t.protocol }}
    {{- if typeIs "string" $l.backend }}
    backend: {{ $l.backend | quote }}
    {{- else }}
    backend:
      {{- toYaml $l.backend | nindent 6 }}
    {{- end }}
    {{- $names := index $s.hostnames $name }}
    {{- if ne $t.protocol "https" }}
    hostname: {{ index $names "2bis" | first }}
    {{- end }}
    {{- if $mono }}
    flow: mssante
    {{- else }}
    sni:
      {{- range $flow := list "2bis" "igcsante" }}
      {{- range $host := index $names $flow }}
      {{ $host }}: {{ $flow }}
      {{- end }}
      {{- end }}
    default_flow: 2bis        # no SNI: the 2BIS flow (notice §4.1)
    unknown_sni: default
    {{- end }}
    {{- if $.Values.proxyProtocol.enabled }}
    proxy_protocol_from: {{ toJson $.Values.proxyProtocol.from }}
    {{- end }}
    {{- if eq $t.protocol "https" }}
    http: {headers: {{ toJson ($l.headers | default (list "forwarded" "nginx" "card")) }}}
    {{- end }}
{{- end }}
{{- end }}
{{- end -}}
