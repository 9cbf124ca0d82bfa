{{- define "batch-gateway.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "batch-gateway.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "batch-gateway.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "batch-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "batch-gateway.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator's config (values.config or files/gateway.toml). */}}
{{- define "batch-gateway.baseConfig" -}}
{{- if .Values.config -}}
{{ .Values.config }}
{{- else -}}
{{ .Files.Get "files/gateway.toml" }}
{{- end -}}
{{- end -}}

{{/* How many replicas the release can run at most. */}}
{{- define "batch-gateway.maxReplicas" -}}
{{- if .Values.autoscaling.enabled -}}
{{- .Values.autoscaling.maxReplicas -}}
{{- else -}}
{{- .Values.replicaCount -}}
{{- end -}}
{{- end -}}

{{/*
Refuses what would silently weaken the gateway's guarantees: several
replicas whose limits and single-use tokens are each their own.
*/}}
{{- define "batch-gateway.validate" -}}
{{- $s := .Values.sharedState -}}
{{- $own := contains "[shared_state]" (include "batch-gateway.baseConfig" .) -}}
{{- $several := or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) -}}
{{- if and $several (not $s.enabled) (not $own) (not $s.allowPerReplicaLimits) -}}
{{- fail (printf "batch-gateway: %s without shared state: every replica would keep its own limits, a single-use token would be accepted once per replica and a daily_quota would allow quota x replicas. Set sharedState.enabled with sharedState.url (or sharedState.sentinel), or replicaCount: 1 without autoscaling, or sharedState.allowPerReplicaLimits: true to accept per-replica limits." (ternary "autoscaling" (printf "replicaCount %d" (int .Values.replicaCount)) .Values.autoscaling.enabled)) -}}
{{- end -}}
{{- if $s.enabled -}}
{{- if $own -}}
{{- fail "batch-gateway: sharedState.enabled and a [shared_state] section in config: give it in one place (the values write the section)" -}}
{{- end -}}
{{- if and (not $s.url) (not $s.sentinel.urls) -}}
{{- fail "batch-gateway: sharedState.enabled needs sharedState.url, or sharedState.sentinel.urls with sharedState.sentinel.master" -}}
{{- end -}}
{{- if and $s.url $s.sentinel.urls -}}
{{- fail "batch-gateway: give sharedState.url or sharedState.sentinel.urls, not both" -}}
{{- end -}}
{{- if and $s.sentinel.urls (not $s.sentinel.master) -}}
{{- fail "batch-gateway: sharedState.sentinel.urls needs sharedState.sentinel.master" -}}
{{- end -}}
{{- if and $s.username (not $s.passwordSecret) -}}
{{- fail "batch-gateway: sharedState.username needs sharedState.passwordSecret (an existing Secret with key password)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The config the pods read: the operator's, plus [shared_state] from values. */}}
{{- define "batch-gateway.config" -}}
{{ include "batch-gateway.baseConfig" . }}
{{- with .Values.kubernetesIssuer }}
{{- if .enabled }}

# From the chart's kubernetesIssuer values: this cluster's service accounts.
[[auth.issuers]]
issuer = {{ .issuer | toJson }}
algorithms = {{ .algorithms | toJson }}
jwks_url = {{ .jwksUrl | toJson }}
jwks_ca_file = "/var/run/secrets/batch-gateway/kube-api/ca.crt"
jwks_bearer_token_file = "/var/run/secrets/batch-gateway/kube-api/token"
max_token_lifetime_s = {{ int .maxTokenLifetimeS }}
{{- if .teamClaim }}
team_claim = {{ .teamClaim | toJson }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.sharedState }}
{{- if .enabled }}

# From the chart's sharedState values.
[shared_state]
backend = "redis"
{{- if .url }}
url = {{ .url | toJson }}
{{- else }}
sentinel_urls = {{ .sentinel.urls | toJson }}
sentinel_master = {{ .sentinel.master | toJson }}
{{- end }}
{{- if .caSecret }}
ca_file = "/etc/batch-gateway/redis-ca/ca.crt"
{{- end }}
{{- if .username }}
username = {{ .username | toJson }}
{{- end }}
{{- if .passwordSecret }}
password_file = "/etc/batch-gateway/redis-password/password"
{{- end }}
key_prefix = {{ .keyPrefix | toJson }}
timeout_ms = {{ int .timeoutMs }}
fallback_replicas = {{ if gt (int .fallbackReplicas) 0 }}{{ int .fallbackReplicas }}{{ else }}{{ include "batch-gateway.maxReplicas" $ }}{{ end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The pod template, shared by the Deployment and the StatefulSet. */}}
{{- define "batch-gateway.pod" -}}
metadata:
  labels:
    {{- include "batch-gateway.selector" . | nindent 4 }}
  annotations:
    checksum/config: {{ include "batch-gateway.config" . | sha256sum }}
spec:
  serviceAccountName: {{ include "batch-gateway.serviceAccountName" . }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- range . }}
    - {{ toYaml . | nindent 6 | trim }}
      labelSelector:
        matchLabels:
          {{- include "batch-gateway.selector" $ | nindent 10 }}
    {{- end }}
  {{- end }}
  containers:
    - name: gateway
      image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["serve", "--config", "/etc/batch-gateway/config/gateway.toml"]
      env:
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        # Every audit record names its replica: the pod.
        - name: BATCH_GATEWAY_REPLICA
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- with .Values.env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: data
          containerPort: 8080
        - name: admin
          containerPort: 9090
      livenessProbe:
        httpGet:
          path: /healthz
          port: admin
        periodSeconds: 10
      readinessProbe:
        httpGet:
          path: /readyz
          port: admin
        periodSeconds: 5
      lifecycle:
        preStop:
          sleep:
            seconds: {{ .Values.preStopSleepSeconds }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/batch-gateway/config
          readOnly: true
        - name: audit-hmac
          mountPath: /etc/batch-gateway/audit-hmac
          readOnly: true
        {{- if .Values.audit.signing.enabled }}
        - name: audit-signing
          mountPath: /etc/batch-gateway/audit-signing
          readOnly: true
        {{- end }}
        {{- if .Values.tls.enabled }}
        - name: tls
          mountPath: /etc/batch-gateway/tls
          readOnly: true
        {{- end }}
        {{- if .Values.vault.caSecret }}
        - name: vault-ca
          mountPath: /etc/batch-gateway/vault
          readOnly: true
        {{- end }}
        {{- if and .Values.sharedState.enabled .Values.sharedState.passwordSecret }}
        - name: redis-password
          mountPath: /etc/batch-gateway/redis-password
          readOnly: true
        {{- end }}
        {{- if and .Values.sharedState.enabled .Values.sharedState.caSecret }}
        - name: redis-ca
          mountPath: /etc/batch-gateway/redis-ca
          readOnly: true
        {{- end }}
        # The service-account token for Vault's Kubernetes login, 0440 (the
        # automounted token is 0644, which the gateway refuses as a key file).
        - name: vault-login-token
          mountPath: /var/run/secrets/batch-gateway/vault
          readOnly: true
        {{- if .Values.kubernetesIssuer.enabled }}
        # The pod's token for the API server (its default audience) and the
        # cluster CA: the key set of callers' service-account tokens.
        - name: kube-api
          mountPath: /var/run/secrets/batch-gateway/kube-api
          readOnly: true
        {{- end }}
        # Each pod writes its own chain, in a folder named after the pod.
        - name: audit
          mountPath: /var/lib/batch-gateway/audit
          subPathExpr: $(POD_NAME)
  volumes:
    {{- if .Values.kubernetesIssuer.enabled }}
    - name: kube-api
      projected:
        defaultMode: 0440
        sources:
          - serviceAccountToken:
              path: token
              expirationSeconds: 3600
          - configMap:
              name: kube-root-ca.crt
              items:
                - key: ca.crt
                  path: ca.crt
    {{- end }}
    - name: vault-login-token
      projected:
        defaultMode: 0440
        sources:
          - serviceAccountToken:
              path: token
              expirationSeconds: 3600
    - name: config
      configMap:
        name: {{ include "batch-gateway.fullname" . }}
    - name: audit-hmac
      secret:
        secretName: {{ .Values.audit.hmacKeySecret }}
        # 0440: the gateway refuses key files anyone may read; fsGroup gives it the group.
        defaultMode: 0440
    {{- if .Values.audit.signing.enabled }}
    - name: audit-signing
      secret:
        secretName: {{ .Values.audit.signing.secret }}
        # 0440: the gateway refuses key files anyone may read; fsGroup gives it the group.
        defaultMode: 0440
    {{- end }}
    {{- if .Values.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ .Values.tls.secret }}
        # 0440: the gateway refuses key files anyone may read; fsGroup gives it the group.
        defaultMode: 0440
    {{- end }}
    {{- if .Values.vault.caSecret }}
    - name: vault-ca
      secret:
        secretName: {{ .Values.vault.caSecret }}
        # 0440: the gateway refuses key files anyone may read; fsGroup gives it the group.
        defaultMode: 0440
    {{- end }}
    {{- if and .Values.sharedState.enabled .Values.sharedState.passwordSecret }}
    - name: redis-password
      secret:
        secretName: {{ .Values.sharedState.passwordSecret }}
        # 0440: the gateway refuses key files anyone may read; fsGroup gives it the group.
        defaultMode: 0440
    {{- end }}
    {{- if and .Values.sharedState.enabled .Values.sharedState.caSecret }}
    - name: redis-ca
      secret:
        secretName: {{ .Values.sharedState.caSecret }}
        defaultMode: 0440
    {{- end }}
    {{- if not .Values.audit.persistence.enabled }}
    - name: audit
      emptyDir: {}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
