{{- define "sparsify-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sparsify-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sparsify-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "sparsify-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "sparsify-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sparsify-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sparsify-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sparsify-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Rules the operator needs, shared by the Role (namespace mode) and the ClusterRole. */}}
{{- define "sparsify-operator.rules" -}}
# create/delete: a SparsifySweep's child experiments
- apiGroups: ["sparsify.dev"]
  resources: ["sparsifyexperiments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["sparsify.dev"]
  resources: ["sparsifyexperiments/status"]
  verbs: ["get", "patch"]
# ownerReferences with blockOwnerDeletion on the Jobs
- apiGroups: ["sparsify.dev"]
  resources: ["sparsifyexperiments/finalizers"]
  verbs: ["update"]
- apiGroups: ["sparsify.dev"]
  resources: ["sparsifysweeps"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["sparsify.dev"]
  resources: ["sparsifysweeps/status"]
  verbs: ["get", "patch"]
# ownerReferences with blockOwnerDeletion on the child experiments
- apiGroups: ["sparsify.dev"]
  resources: ["sparsifysweeps/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# spec.nodes > 1: the experiment's JobSet (only where the JobSet CRD is installed)
- apiGroups: ["jobset.x-k8s.io"]
  resources: ["jobsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# termination messages of the runner pods
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.storage.checkSecrets }}
# only to check that spec.storage.secretRef exists; the values are never read into status
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
{{- end -}}
