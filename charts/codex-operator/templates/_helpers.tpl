{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "codex-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: RELEASE-CHART, or RELEASE when it already contains the chart name. */}}
{{- define "codex-operator.fullname" -}}
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

{{- define "codex-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "codex-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "codex-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "codex-operator.labels" -}}
helm.sh/chart: {{ include "codex-operator.chart" . }}
{{ include "codex-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: codex-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "codex-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "codex-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "codex-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The default sidecar image: sidecar.image, each part defaulting to the operator's image. */}}
{{- define "codex-operator.sidecarImage" -}}
{{- $repo := default .Values.image.repository .Values.sidecar.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.sidecar.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/*
The --fs-group value: `auto`, `none` or a group ID. A number from a values file arrives as a
float64, which would print as 1.00068e+09: print it as an integer.
*/}}
{{- define "codex-operator.fsGroup" -}}
{{- $fsGroup := .Values.agents.fsGroup }}
{{- if kindIs "string" $fsGroup }}{{ $fsGroup }}{{ else }}{{ int64 $fsGroup }}{{ end }}
{{- end }}

{{- define "codex-operator.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}
