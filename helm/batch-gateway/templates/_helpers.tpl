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

{{- define "batch-gateway.config" -}}
{{- if .Values.config -}}
{{ .Values.config }}
{{- else -}}
{{ .Files.Get "files/gateway.toml" }}
{{- end -}}
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
        # The service-account token for Vault's Kubernetes login, 0440 (the
        # automounted token is 0644, which the gateway refuses as a key file).
        - name: vault-login-token
          mountPath: /var/run/secrets/batch-gateway/vault
          readOnly: true
        # Each pod writes its own chain, in a folder named after the pod.
        - name: audit
          mountPath: /var/lib/batch-gateway/audit
          subPathExpr: $(POD_NAME)
  volumes:
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
