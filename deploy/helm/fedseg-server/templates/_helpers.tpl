{{- define "fedseg-server.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fedseg-server.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fedseg-server.labels" -}}
{{ include "fedseg-server.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/*
A probe's action: HTTP(S) GET of .path; a TCP connect when mutual TLS is required, since
the kubelet has no client certificate to present.
*/}}
{{- define "fedseg-server.probe" -}}
{{- if and .Values.tls.clientCaSecret (not .Values.tls.clientCertOptional) -}}
tcpSocket: {port: http}
{{- else -}}
httpGet: {path: {{ .path }}, port: http{{ if .Values.tls.secret }}, scheme: HTTPS{{ end }}}
{{- end -}}
{{- end }}
