{{/* Names and labels shared by the templates. */}}

{{- define "opflow.labels" -}}
app.kubernetes.io/part-of: opflow
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "opflow.dispatcher.name" -}}
{{ .Release.Name }}-dispatcher
{{- end }}

{{- define "opflow.dispatcher.selector" -}}
app.kubernetes.io/name: opflow-dispatcher
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* An op version's Kubernetes name: noop@1.1.0 -> <release>-op-noop-1-1-0. */}}
{{- define "opflow.op.name" -}}
{{ printf "%s-op-%s-%s" .root.Release.Name .op.name (.op.version | replace "." "-" | replace "+" "-") | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "opflow.op.queue" -}}
opflow.op.{{ .op.name }}.{{ .op.version }}
{{- end }}

{{- define "opflow.op.selector" -}}
app.kubernetes.io/name: opflow-op
app.kubernetes.io/instance: {{ .root.Release.Name }}
opflow.dev/op: {{ .op.name }}
opflow.dev/op-version: {{ .op.version | quote }}
{{- end }}

{{/* Non-root, read-only root filesystem, no privileges: every opflow container. */}}
{{- define "opflow.containerSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  capabilities:
    drop: ["ALL"]
  seccompProfile:
    type: RuntimeDefault
{{- end }}

{{/* Whether each op version logs in as a broker user of its own (op_identity: required). */}}
{{- define "opflow.opIdentity" -}}
{{- if eq (.Values.dispatcher.settings.op_identity | default "auto") "required" }}true{{ end }}
{{- end }}

{{/* An op version's broker user (the dispatcher's naming: opflow-op:<vhost>:<name>@<version>). */}}
{{- define "opflow.op.brokerUser" -}}
{{ printf "opflow-op:%s:%s@%s" .root.Values.broker.vhost .op.name .op.version }}
{{- end }}

{{/* The Secret holding an op version's broker login. */}}
{{- define "opflow.op.brokerSecret" -}}
{{ include "opflow.op.name" . }}-broker
{{- end }}

{{- define "opflow.amqpEnv" -}}
- name: OPFLOW_AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.connections }}
      key: amqp-url
- name: OPFLOW_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end }}
