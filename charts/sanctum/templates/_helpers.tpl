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
    "forwarder" (include "sanctum.image" (dict "root" . "name" "sanctum-forwarder"))
    "pullPolicy" .Values.image.pullPolicy)
  "gateway" (dict
    "url" (include "sanctum.gatewayUrl" .)
    "namespace" (include "sanctum.gatewayNamespace" .)
    "port" .Values.gateway.port
    "podLabels" .Values.gateway.podLabels)
  "trat" (dict "signingKeyFile" "/etc/sanctum/signing-key/key.pem")
-}}
{{- with include "sanctum.gatewayCaBundle" . }}
{{- $_ := set $defaults.gateway "caBundle" . }}
{{- end }}
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

{{- define "sanctum.gatewayName" -}}
{{ .Release.Name }}-gateway
{{- end }}

{{- define "sanctum.gatewayTlsSecret" -}}
{{- if eq .Values.gateway.tls.mode "secret" -}}
{{ required "gateway.tls.secretName is required with gateway.tls.mode=secret" .Values.gateway.tls.secretName }}
{{- else -}}
{{ include "sanctum.gatewayName" . }}-tls
{{- end }}
{{- end }}

{{- define "sanctum.gatewayNamespace" -}}
{{ .Values.gateway.namespace | default .Release.Namespace }}
{{- end }}

{{- define "sanctum.gatewayDnsNames" -}}
{{- $svc := include "sanctum.gatewayName" . }}
{{- $ns := include "sanctum.gatewayNamespace" . }}
{{- toJson (list (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns)) }}
{{- end }}

{{- /* The URL every forwarder sends to. */ -}}
{{- define "sanctum.gatewayUrl" -}}
{{- $scheme := ternary "http" "https" (eq .Values.gateway.tls.mode "none") -}}
{{ printf "%s://%s.%s.svc.cluster.local:%v" $scheme (include "sanctum.gatewayName" .) (include "sanctum.gatewayNamespace" .) .Values.gateway.port }}
{{- end }}

{{- /*
The gateway's certificate, key and CA (selfSigned mode), computed once per render and kept
across upgrades: an existing Secret is reused, so running forwarders keep trusting the CA.
*/ -}}
{{- define "sanctum.gatewayTlsMaterial" -}}
{{- if not (hasKey .Values "__gatewayTls") }}
{{- $existing := lookup "v1" "Secret" (include "sanctum.gatewayNamespace" .) (include "sanctum.gatewayTlsSecret" .) }}
{{- if and $existing (hasKey ($existing.data | default dict) "ca.crt") }}
{{- $_ := set .Values "__gatewayTls" (dict "crt" (index $existing.data "tls.crt") "key" (index $existing.data "tls.key") "ca" (index $existing.data "ca.crt")) }}
{{- else }}
{{- $dns := include "sanctum.gatewayDnsNames" . | fromJsonArray }}
{{- $ca := genCA (printf "%s-ca" (include "sanctum.gatewayName" .)) 3650 }}
{{- $cert := genSignedCert (first $dns) nil $dns 3650 $ca }}
{{- $_ := set .Values "__gatewayTls" (dict "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) "ca" ($ca.Cert | b64enc)) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sanctum.gatewayTls" -}}
{{- include "sanctum.gatewayTlsMaterial" . }}
tls.crt: {{ .Values.__gatewayTls.crt }}
tls.key: {{ .Values.__gatewayTls.key }}
ca.crt: {{ .Values.__gatewayTls.ca }}
{{- end }}

{{- /* The CA (PEM) the forwarders verify the gateway with; empty for plain HTTP. */ -}}
{{- define "sanctum.gatewayCaBundle" -}}
{{- if eq .Values.gateway.tls.mode "selfSigned" }}
{{- include "sanctum.gatewayTlsMaterial" . }}
{{- .Values.__gatewayTls.ca | b64dec }}
{{- else if eq .Values.gateway.tls.mode "secret" }}
{{- /* Empty: the forwarders verify the gateway with the system roots of their image. */ -}}
{{- .Values.gateway.tls.caBundle }}
{{- end }}
{{- end }}

{{- /* Identity-token subjects the gateway accepts: SPIFFE scanners, and ServiceAccounts
when pods prove themselves with projected ServiceAccount tokens. */ -}}
{{- define "sanctum.gatewayAllowedSubjects" -}}
{{- if .Values.gateway.allowedSubjects }}
{{- join "," .Values.gateway.allowedSubjects }}
{{- else }}
{{- $td := .Values.operator.config.identity.trustDomain | default "sage-sanctum.local" }}
{{- printf "spiffe://%s/scanner/*,system:serviceaccount:*:*" $td }}
{{- end }}
{{- end }}
