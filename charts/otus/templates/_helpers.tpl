{{/* Names, labels and the image reference shared by every template. */}}

{{- define "otus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "otus.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "otus.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "otus.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "otus.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: otus
{{- end -}}

{{- define "otus.operator.selector" -}}
app.kubernetes.io/name: otus-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "otus.agent.selector" -}}
app.kubernetes.io/name: otus-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "otus.operator.name" -}}
{{- printf "%s-operator" (include "otus.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "otus.agent.name" -}}
{{- printf "%s-agent" (include "otus.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "otus.operator.serviceAccount" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "otus.operator.name" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "otus.agent.serviceAccount" -}}
{{- if .Values.agent.serviceAccount.create -}}
{{- default (include "otus.agent.name" .) .Values.agent.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.agent.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "otus.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "otus.secretNamespaces" -}}
{{- if .Values.agent.secretNamespaces -}}
{{- toJson (uniq .Values.agent.secretNamespaces) -}}
{{- else -}}
{{- toJson (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}
