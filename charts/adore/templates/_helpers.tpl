{{- define "adore.labels" -}}
app.kubernetes.io/name: adore
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "adore.selector" -}}
app.kubernetes.io/name: adore
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "adore.operatorName" -}}
{{ .Release.Name }}-operator
{{- end }}

{{- define "adore.tritonName" -}}
{{ .Release.Name }}-triton
{{- end }}

{{- define "adore.serviceAccountName" -}}
{{ .Values.serviceAccount.name }}
{{- end }}

{{- define "adore.image" -}}
{{ .image.repository }}:{{ .image.tag | default .appVersion }}
{{- end }}

{{/* The Prometheus operator's API is served: render its objects. */}}
{{- define "adore.monitoring" -}}
{{- if and .Values.monitoring.enabled (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") -}}true{{- end -}}
{{- end }}
