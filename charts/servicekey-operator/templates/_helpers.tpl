{{/*
Chart name, shortened to fit a label value.
*/}}
{{- define "servicekey-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources: the release name, plus the chart name unless the release name
already contains it. Truncated to 53 characters so that suffixes such as "-metrics" still fit in 63.
*/}}
{{- define "servicekey-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 53 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 53 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 53 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "servicekey-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the operator pods. Never change them in an upgrade: a Deployment's selector is
immutable.
*/}}
{{- define "servicekey-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "servicekey-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels on every resource.
*/}}
{{- define "servicekey-operator.labels" -}}
helm.sh/chart: {{ include "servicekey-operator.chart" . }}
{{ include "servicekey-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: servicekey-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels of a CRD (templates/crds/, written by hack/sync-chart-crds.sh): the labels of the repository's CRD, with
the chart's added where the CRD has none of its own. Called with (dict "context" $ "labels" <the CRD's labels>).
*/}}
{{- define "servicekey-operator.crdLabels" -}}
{{- $chart := include "servicekey-operator.labels" .context | fromYaml }}
{{- toYaml (merge (deepCopy .labels) $chart) }}
{{- end }}

{{/*
The pull secrets of both pods: global.imagePullSecrets (as umbrella charts set it, names or {name: ...}) and
imagePullSecrets, each name once. Rendered as a YAML list of {name: ...}, empty for none.
*/}}
{{- define "servicekey-operator.imagePullSecrets" -}}
{{- $names := list }}
{{- range concat ((.Values.global).imagePullSecrets | default list) (.Values.imagePullSecrets | default list) }}
{{- if kindIs "string" . }}
{{- $names = append $names . }}
{{- else }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}
{{- range $names | uniq }}
- name: {{ . }}
{{- end }}
{{- end }}

{{/*
Name of the ServiceAccount the operator runs as.
*/}}
{{- define "servicekey-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "servicekey-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image reference: repository@digest when a digest is given, else repository:tag (the tag
defaulting to the chart's appVersion).
*/}}
{{- define "servicekey-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
True ("true") when the operator serves only the namespaces in watchNamespaces; empty otherwise.
*/}}
{{- define "servicekey-operator.namespaced" -}}
{{- if .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
Namespaces that get a ConfigMap-only Role (namespaced mode): publishNamespaces that are not already
watched. Rendered as a YAML list.
*/}}
{{- define "servicekey-operator.publishOnlyNamespaces" -}}
{{- $publishOnly := list }}
{{- range .Values.rbac.publishNamespaces }}
{{- if not (has . $.Values.watchNamespaces) }}
{{- $publishOnly = append $publishOnly . }}
{{- end }}
{{- end }}
{{- toYaml $publishOnly }}
{{- end }}

{{/*
Where the operator reads its Vault credentials and CA bundle inside the container.
*/}}
{{- define "servicekey-operator.paths.caBundle" -}}/etc/servicekey/vault-ca/ca.crt{{- end }}
{{- define "servicekey-operator.paths.clientCert" -}}/etc/servicekey/vault-client/tls.crt{{- end }}
{{- define "servicekey-operator.paths.clientKey" -}}/etc/servicekey/vault-client/tls.key{{- end }}
{{- define "servicekey-operator.paths.vaultToken" -}}/etc/servicekey/vault-token/token{{- end }}
{{- define "servicekey-operator.paths.approleRoleId" -}}/etc/servicekey/vault-approle/role-id{{- end }}
{{- define "servicekey-operator.paths.approleSecretId" -}}/etc/servicekey/vault-approle/secret-id{{- end }}
{{- define "servicekey-operator.paths.saTokenDir" -}}/var/run/secrets/servicekey/vault-sa{{- end }}
{{- define "servicekey-operator.paths.defaultSaToken" -}}/var/run/secrets/kubernetes.io/serviceaccount/token{{- end }}

{{/*
Checks that the schema cannot express; rendering fails with a clear message.
*/}}
{{- define "servicekey-operator.validate" -}}
{{- if and .Values.admissionPolicy.enabled (semverCompare "<1.30.0-0" .Capabilities.KubeVersion.Version) }}
{{- fail (printf "admissionPolicy.enabled needs Kubernetes 1.30+ (ValidatingAdmissionPolicy, admissionregistration.k8s.io/v1); this cluster is %s: set admissionPolicy.enabled=false" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.peering.enabled) }}
{{- fail "replicaCount > 1 needs peering.enabled=true: without kopf peering every replica would act on every ServiceKey" }}
{{- end }}
{{- if eq (int .Values.operator.metricsPort) (int .Values.operator.healthPort) }}
{{- fail "operator.metricsPort and operator.healthPort must differ" }}
{{- end }}
{{- if and .Values.rbac.publishNamespaces (not .Values.watchNamespaces) }}
{{- fail "rbac.publishNamespaces applies only with watchNamespaces; without it the operator may already write ConfigMaps in every namespace" }}
{{- end }}
{{- if and .Values.jwksServer.enabled (eq (include "servicekey-operator.jwksServer.serviceAccountName" .) (include "servicekey-operator.serviceAccountName" .)) }}
{{- fail "jwksServer.serviceAccount.name must differ from the operator's ServiceAccount: the JWKS server would run with the operator's rights" }}
{{- end }}
{{- end }}

{{/*
RBAC rules the operator needs inside every namespace it serves. Nothing on Secrets: private keys
live in Vault only, and the user Secrets the pod mounts (CA bundle, AppRole, token) are mounted by
the kubelet, which needs no RBAC from the operator.
*/}}
{{- define "servicekey-operator.rules.serving" -}}
# The ServiceKey custom resource: list and watch it, and patch it for kopf's finalizer and progress annotations.
- apiGroups: ["servicekey.io"]
  resources: ["servicekeys"]
  verbs: ["list", "watch", "patch"]
# Its status: observedGeneration, keyId, conditions, ... (merge patches only).
- apiGroups: ["servicekey.io"]
  resources: ["servicekeys/status"]
  verbs: ["patch"]
# Setting the ServiceKey as blockOwnerDeletion owner of its ConfigMaps (OwnerReferencesPermissionEnforcement).
- apiGroups: ["servicekey.io"]
  resources: ["servicekeys/finalizers"]
  verbs: ["update"]
{{ include "servicekey-operator.rules.publishing" . }}
# Events about ServiceKeys: kopf posts core/v1 Events (it never updates one).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
RBAC rules for writing the public-key ConfigMaps (public.pem, jwks.json, kid) into a namespace.
*/}}
{{- define "servicekey-operator.rules.publishing" -}}
# The public-key ConfigMaps: create and keep them equal to what Vault holds (whole updates, never patches);
# delete the published copies that a ServiceKey no longer targets. RBAC cannot narrow this to our own
# ConfigMaps; the chart's ValidatingAdmissionPolicy (admissionPolicy.enabled) does.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "update", "delete"]
{{- end }}

{{/*
RBAC rules that only exist cluster-wide, whatever the watched namespaces.
*/}}
{{- define "servicekey-operator.rules.clusterOnly" -}}
# Namespaces: resolving spec.publicKey.namespaceSelector, and kopf's namespace observation.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
# CRDs: kopf's resource scanning (it waits for servicekeys.servicekey.io and the peering CRDs).
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}

{{/*
RBAC rules for kopf peering objects (only with peering.enabled): kopf lists and watches them to see
its peers, and patches its own keep-alive into their status.
*/}}
{{- define "servicekey-operator.rules.peering" -}}
{{- $resource := ternary "kopfpeerings" "clusterkopfpeerings" (not (empty .Values.watchNamespaces)) -}}
# kopf peering: see the other replicas and publish this one's keep-alive (only one replica is active).
- apiGroups: ["kopf.dev"]
  resources: [{{ $resource | quote }}]
  verbs: ["list", "watch", "patch"]
{{- end }}


{{/*
The JWKS server (jwksServer.*): a Deployment of its own, with its own ServiceAccount and RBAC, that serves
the public keys over HTTP. Its resources are named <fullname>-jwks, so that its Service answers at
http://<fullname>-jwks.<namespace>.svc.
*/}}
{{- define "servicekey-operator.jwksServer.fullname" -}}
{{- printf "%s-jwks" (include "servicekey-operator.fullname" .) }}
{{- end }}

{{/*
Labels that select the JWKS server pods. They must not overlap the operator's selector (name + instance),
whose Service, PodDisruptionBudget and NetworkPolicy would otherwise take the JWKS pods for operator pods:
hence an app.kubernetes.io/name of its own. Never change them in an upgrade (the selector is immutable).
*/}}
{{- define "servicekey-operator.jwksServer.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-jwks" (include "servicekey-operator.name" . | trunc 58 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels on every JWKS server resource.
*/}}
{{- define "servicekey-operator.jwksServer.labels" -}}
helm.sh/chart: {{ include "servicekey-operator.chart" . }}
{{ include "servicekey-operator.jwksServer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: jwks-server
app.kubernetes.io/part-of: servicekey-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Name of the ServiceAccount the JWKS server runs as (never the operator's).
*/}}
{{- define "servicekey-operator.jwksServer.serviceAccountName" -}}
{{- if .Values.jwksServer.serviceAccount.create }}
{{- default (include "servicekey-operator.jwksServer.fullname" .) .Values.jwksServer.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.jwksServer.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The JWKS server's port: its name (http, or https with jwksServer.tls), the container port, and the Service
port (jwksServer.service.port, or 80 / 443 when that is 0).
*/}}
{{- define "servicekey-operator.jwksServer.portName" -}}
{{- ternary "https" "http" (not (empty .Values.jwksServer.tls.secretName)) }}
{{- end }}
{{- define "servicekey-operator.jwksServer.containerPort" -}}8080{{- end }}
{{- define "servicekey-operator.jwksServer.servicePort" -}}
{{- if .Values.jwksServer.service.port }}
{{- .Values.jwksServer.service.port }}
{{- else }}
{{- ternary 443 80 (not (empty .Values.jwksServer.tls.secretName)) }}
{{- end }}
{{- end }}

{{/*
Where the JWKS server reads its TLS certificate and key (from the Secret jwksServer.tls.secretName).
*/}}
{{- define "servicekey-operator.paths.jwksTlsCert" -}}/etc/servicekey/jwks-tls/tls.crt{{- end }}
{{- define "servicekey-operator.paths.jwksTlsKey" -}}/etc/servicekey/jwks-tls/tls.key{{- end }}

{{/*
RBAC rules of the JWKS server, cluster-wide or in each watched namespace: it lists and watches the source
public-key ConfigMaps through a server-side label selector, and does nothing else. RBAC cannot narrow a list
to a label; the rights are read-only, never get, and nothing on Secrets.
*/}}
{{- define "servicekey-operator.rules.jwksServer" -}}
# The public-key ConfigMaps the operator publishes (list + watch with the selector
# app.kubernetes.io/managed-by=servicekey-operator,servicekey.io/http=true,!servicekey.io/source-namespace).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["list", "watch"]
{{- end }}

{{/*
The operator's environment as the chart sets it (its configuration contract); operator.extraEnv comes after it
and may not repeat a name.
*/}}
{{- define "servicekey-operator.operatorEnv" -}}
{{- $auth := .Values.vault.auth }}
{{- $projectedToken := and (eq $auth.method "kubernetes") $auth.kubernetes.tokenAudience }}
- name: VAULT_ADDR
  value: {{ .Values.vault.address | quote }}
{{- with .Values.vault.namespace }}
- name: VAULT_NAMESPACE
  value: {{ . | quote }}
{{- end }}
{{- if .Values.vault.caBundle.source }}
- name: VAULT_CACERT
  value: {{ include "servicekey-operator.paths.caBundle" . | quote }}
{{- end }}
{{- if .Values.vault.clientCertificate.secretName }}
- name: VAULT_CLIENT_CERT
  value: {{ include "servicekey-operator.paths.clientCert" . | quote }}
- name: VAULT_CLIENT_KEY
  value: {{ include "servicekey-operator.paths.clientKey" . | quote }}
{{- end }}
{{- with .Values.vault.tlsServerName }}
- name: VAULT_TLS_SERVER_NAME
  value: {{ . | quote }}
{{- end }}
- name: SERVICEKEY_VAULT_AUTH_METHOD
  value: {{ $auth.method | quote }}
{{- with $auth.mount }}
- name: SERVICEKEY_VAULT_AUTH_MOUNT
  value: {{ . | quote }}
{{- end }}
{{- if eq $auth.method "kubernetes" }}
- name: SERVICEKEY_VAULT_ROLE
  value: {{ $auth.kubernetes.role | quote }}
- name: SERVICEKEY_VAULT_SA_TOKEN_FILE
  {{- if $projectedToken }}
  value: {{ printf "%s/token" (include "servicekey-operator.paths.saTokenDir" .) | quote }}
  {{- else }}
  value: {{ include "servicekey-operator.paths.defaultSaToken" . | quote }}
  {{- end }}
{{- else if eq $auth.method "approle" }}
- name: SERVICEKEY_VAULT_ROLE_ID_FILE
  value: {{ include "servicekey-operator.paths.approleRoleId" . | quote }}
- name: SERVICEKEY_VAULT_SECRET_ID_FILE
  value: {{ include "servicekey-operator.paths.approleSecretId" . | quote }}
{{- else if eq $auth.method "token" }}
- name: VAULT_TOKEN_FILE
  value: {{ include "servicekey-operator.paths.vaultToken" . | quote }}
{{- end }}
- name: SERVICEKEY_KV_MOUNT
  value: {{ .Values.vault.kvMount | quote }}
- name: SERVICEKEY_TRANSIT_MOUNT
  value: {{ .Values.vault.transitMount | quote }}
- name: SERVICEKEY_PATH_PREFIX
  value: {{ .Values.vault.pathPrefix | quote }}
- name: SERVICEKEY_WATCH_NAMESPACES
  value: {{ join "," .Values.watchNamespaces | quote }}
{{- if .Values.watchNamespaces }}
- name: SERVICEKEY_PUBLISH_NAMESPACES
  value: {{ join "," .Values.rbac.publishNamespaces | quote }}
{{- end }}
- name: SERVICEKEY_METRICS_PORT
  value: {{ .Values.operator.metricsPort | quote }}
- name: SERVICEKEY_HEALTH_PORT
  value: {{ .Values.operator.healthPort | quote }}
- name: SERVICEKEY_LOG_FORMAT
  value: {{ .Values.operator.logFormat | quote }}
- name: SERVICEKEY_LOG_LEVEL
  value: {{ .Values.operator.logLevel | quote }}
- name: SERVICEKEY_PEERING
  value: {{ ternary .Values.peering.name "" .Values.peering.enabled | quote }}
- name: SERVICEKEY_PEERING_LIFETIME
  value: {{ .Values.peering.lifetime | quote }}
# kopf's peering identity: a restarted container replaces its own stale keep-alive at once.
- name: POD_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}

{{/*
Labels of the uninstall hook's objects (templates/uninstall-hook.yaml): an app.kubernetes.io/name of their own,
so that the operator's selector (name + instance), hence its Service, PodDisruptionBudget and NetworkPolicy, never
takes the hook's pod for an operator pod.
*/}}
{{- define "servicekey-operator.uninstall.labels" -}}
helm.sh/chart: {{ include "servicekey-operator.chart" . }}
app.kubernetes.io/name: {{ printf "%s-uninstall" (include "servicekey-operator.name" . | trunc 53 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: uninstall
app.kubernetes.io/part-of: servicekey-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}
