{{- define "ascendra.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ascendra.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ascendra.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ascendra.labels" -}}
app.kubernetes.io/name: ascendra-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The operator's rules inside a namespace it serves (rbac.yaml). */}}
{{- define "ascendra.namespacedRules" }}
  - apiGroups: [ascendra.io]
    resources: [ascendraservices]
    verbs: [get, list, watch, patch]
  - apiGroups: [ascendra.io]
    resources: [ascendraservices/status]
    verbs: [get, patch]
  - apiGroups: [""]
    resources: [pods]
    verbs: [get, list, watch, create, delete, patch]
  - apiGroups: [""]
    resources: [services, configmaps, serviceaccounts]
    verbs: [get, list, watch, create, patch]
  - apiGroups: [apps]
    resources: [deployments]
    verbs: [get, list, watch, create, patch]
  - apiGroups: [rbac.authorization.k8s.io]
    resources: [roles, rolebindings]
    verbs: [get, list, watch, create, patch]
  - apiGroups: [networking.k8s.io]
    resources: [networkpolicies]
    verbs: [get, list, watch, create, patch]
  - apiGroups: ["", events.k8s.io]
    resources: [events]
    verbs: [create, patch]
  - apiGroups: [monitoring.coreos.com]
    resources: [prometheusrules, servicemonitors, podmonitors]
    verbs: [get, list, watch, create, patch]
{{- end }}
