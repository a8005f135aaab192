{{- define "sanctum.labels" -}}
app.kubernetes.io/part-of: sanctum
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "sanctum.image" -}}
{{ .root.Values.image.registry }}/{{ .name }}:{{ .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- end }}

{{- define "sanctum.operatorConfig" -}}
{{- $defaults := dict
  "namespace" .Release.Namespace
  "images" (dict
    "bridge" (include "sanctum.image" (dict "root" . "name" "sanctum-bridge"))
    "forwarder" (include "sanctum.image" (dict "root" . "name" "sanctum-forwarder")))
  "gateway" (dict
    "url" (printf "http://sanctum-gateway.%s.svc.cluster.local:%v" .Values.gateway.namespace .Values.gateway.port)
    "namespace" .Values.gateway.namespace
    "port" .Values.gateway.port
    "podLabels" .Values.gateway.podLabels)
  "trat" (dict "signingKeyFile" "/etc/sanctum/signing-key/key.pem")
-}}
{{- if .Values.webhook.enabled }}
{{- $_ := set $defaults "webhook" (dict
  "listen" "0.0.0.0:8443"
  "tlsCertFile" "/etc/sanctum/webhook-tls/tls.crt"
  "tlsKeyFile" "/etc/sanctum/webhook-tls/tls.key"
  "caBundleFile" "/etc/sanctum/webhook-tls/ca.crt"
  "tokenServiceUrl" (printf "https://%s-webhook.%s.svc:8443" .Release.Name .Release.Namespace)) }}
{{- end }}
{{- toYaml (mergeOverwrite $defaults (deepCopy .Values.operator.config)) }}
{{- end }}
