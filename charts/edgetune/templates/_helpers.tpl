{{/* Names: <release>-edgetune, or <release> when the release name already says edgetune (Helm convention). */}}
{{- define "edgetune.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "edgetune.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "edgetune.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "edgetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "edgetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "edgetune.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the operator watches (namespaced mode): watch.namespaces, else the release's own. */}}
{{- define "edgetune.watchedNamespaces" -}}
{{- $namespaces := .Values.watch.namespaces | default (list .Release.Namespace) -}}
{{- toJson (uniq $namespaces) -}}
{{- end -}}

{{- define "edgetune.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .appVersion) -}}
{{- end -}}

{{- define "edgetune.leaderElect" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end -}}
{{- end -}}

{{- define "edgetune.leaseName" -}}
{{- printf "%s-leader" (include "edgetune.fullname" .) -}}
{{- end -}}

{{/* Dev MinIO: its Service, and the Secret (same name in every watched namespace) that jobs read. */}}
{{- define "edgetune.minio.fullname" -}}
{{- printf "%s-minio" (include "edgetune.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Default storage for jobs that name none: explicit values first, then the dev MinIO when enabled. */}}
{{- define "edgetune.storage.uri" -}}
{{- if .Values.storage.uri -}}{{ .Values.storage.uri }}
{{- else if .Values.minio.enabled -}}{{ printf "s3://%s/jobs" .Values.minio.bucket }}
{{- end -}}
{{- end -}}

{{- define "edgetune.storage.endpoint" -}}
{{- if .Values.storage.endpoint -}}{{ .Values.storage.endpoint }}
{{- else if .Values.minio.enabled -}}
{{- printf "http://%s.%s.svc:9000" (include "edgetune.minio.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- define "edgetune.storage.credentialsSecret" -}}
{{- if .Values.storage.credentialsSecret -}}{{ .Values.storage.credentialsSecret }}
{{- else if .Values.minio.enabled -}}{{ include "edgetune.minio.fullname" . }}
{{- end -}}
{{- end -}}

{{/* The operator's --network-policy: the networkPolicy values, plus egress to the chart's MinIO when it is on. */}}
{{- define "edgetune.networkPolicy" -}}
{{- $policy := deepCopy .Values.networkPolicy -}}
{{- $egress := $policy.storageEgress | default list -}}
{{- if .Values.minio.enabled -}}
{{- $minio := dict "podSelector" (dict "matchLabels" (dict "app.kubernetes.io/name" .Chart.Name "app.kubernetes.io/instance" .Release.Name "app.kubernetes.io/component" "minio")) "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .Release.Namespace)) -}}
{{- $egress = append $egress (dict "to" (list $minio) "ports" (list (dict "protocol" "TCP" "port" 9000))) -}}
{{- end -}}
{{- $_ := set $policy "storageEgress" $egress -}}
{{- toJson $policy -}}
{{- end -}}
