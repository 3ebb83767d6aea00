{{- define "l7gate.labels" -}}
app.kubernetes.io/name: l7gate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "l7gate.selector" -}}
app.kubernetes.io/name: l7gate
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
