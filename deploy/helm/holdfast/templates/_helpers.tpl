{{/*
Names. Everything is named after the release, as docs/kubernetes.md says:
the StatefulSet <release>, Services <release>-headless, -rw, -ro, -r, -proxy.
*/}}
{{- define "holdfast.fullname" -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "holdfast.sts" -}}
{{- include "holdfast.fullname" . -}}
{{- end -}}

{{- define "holdfast.headless" -}}
{{- printf "%s-headless" (include "holdfast.fullname" .) -}}
{{- end -}}

{{- define "holdfast.cluster" -}}
{{- default .Release.Name .Values.clusterName -}}
{{- end -}}

{{- define "holdfast.serviceAccount" -}}
{{- default (include "holdfast.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "holdfast.proxy.serviceAccount" -}}
{{- default (printf "%s-proxy" (include "holdfast.fullname" .)) .Values.proxy.serviceAccount.name -}}
{{- end -}}

{{- define "holdfast.authSecret" -}}
{{- default (printf "%s-auth" (include "holdfast.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "holdfast.tlsSecret" -}}
{{- default (printf "%s-tls" (include "holdfast.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{/*
The agents' configuration ConfigMap. Not <release>-config: with the default
clusterName (the release name) that is the store's own <cluster>-config.
*/}}
{{- define "holdfast.configMap" -}}
{{- printf "%s-agent" (include "holdfast.fullname" .) -}}
{{- end -}}

{{- define "holdfast.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Labels on every object of the release. */}}
{{- define "holdfast.labels" -}}
app.kubernetes.io/name: holdfast
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ default .Chart.AppVersion .Values.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
holdfast.io/cluster: {{ include "holdfast.cluster" . }}
{{- end -}}

{{/* Selector of the database members (never the proxy pods). */}}
{{- define "holdfast.selectorLabels" -}}
app.kubernetes.io/name: holdfast
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: database
{{- end -}}

{{- define "holdfast.proxy.selectorLabels" -}}
app.kubernetes.io/name: holdfast
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end -}}

{{/* <sts>-<i>.<headless>.<ns>.svc.<domain>: a member's stable DNS name. */}}
{{- define "holdfast.podFQDN" -}}
{{- $ := index . 0 -}}
{{- printf "%s-%d.%s.%s.svc.%s" (include "holdfast.sts" $) (index . 1) (include "holdfast.headless" $) $.Release.Namespace $.Values.clusterDomain -}}
{{- end -}}

{{/* The etcd client URLs of the embedded store, one per member. */}}
{{- define "holdfast.embeddedClientURLs" -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.replicas) -}}
{{- $urls = append $urls (printf "http://%s:2379" (include "holdfast.podFQDN" (list $ $i))) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}

{{/*
synchronousMode as the agent spells it: an unquoted off/on in a values file
reads as a YAML boolean.
*/}}
{{- define "holdfast.synchronousMode" -}}
{{- $m := .Values.synchronousMode -}}
{{- if kindIs "bool" $m -}}
{{- ternary "on" "off" $m -}}
{{- else -}}
{{- $m -}}
{{- end -}}
{{- end -}}

{{/*
A duration ("10s", "1m30s", "500ms", or bare seconds) in milliseconds, for
the cross-field checks. The schema has already checked the syntax.
*/}}
{{- define "holdfast.durationMs" -}}
{{- $s := toString . -}}
{{- if regexMatch "^[0-9]+$" $s -}}
{{- mulf (float64 $s) 1000.0 -}}
{{- else -}}
{{- $total := 0.0 -}}
{{- $scale := dict "h" 3600000.0 "m" 60000.0 "s" 1000.0 "ms" 1.0 "us" 0.001 "µs" 0.001 "ns" 0.000001 -}}
{{- range $part := regexFindAll "[0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h)" $s -1 -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $part -}}
{{- $unit := trimPrefix $num $part -}}
{{- $total = addf $total (mulf (float64 $num) (index $scale $unit)) -}}
{{- end -}}
{{- $total -}}
{{- end -}}
{{- end -}}

{{/*
Cross-field rules values.schema.json cannot express. Each failure names the
values involved.
*/}}
{{- define "holdfast.validate" -}}
{{- $v := .Values -}}
{{- $replicas := int $v.replicas -}}
{{- $sync := include "holdfast.synchronousMode" . -}}
{{- if and (ne $sync "off") (ge (int $v.synchronousNodeCount) $replicas) -}}
{{- fail (printf "synchronousNodeCount (%d) must be less than replicas (%d) when synchronousMode is %q: a primary has at most replicas-1 standbys to wait for (lower synchronousNodeCount, raise replicas, or set synchronousMode=off)" (int $v.synchronousNodeCount) $replicas $sync) -}}
{{- end -}}
{{- if and (eq $v.store.mode "etcd") (empty $v.store.etcd.endpoints) -}}
{{- fail "store.etcd.endpoints is required with store.mode=etcd (list the etcd client URLs, e.g. --set 'store.etcd.endpoints={http://etcd-0.etcd:2379}')" -}}
{{- end -}}
{{- if and (eq $v.store.mode "embedded") (lt $replicas 3) -}}
{{- fail (printf "replicas (%d) must be at least 3 with store.mode=embedded: the embedded etcd needs a majority of its voters, so fewer members cannot survive the loss of one (use store.mode=kubernetes for a smaller cluster)" $replicas) -}}
{{- end -}}
{{- $ttl := float64 (include "holdfast.durationMs" $v.ttl) -}}
{{- $loop := float64 (include "holdfast.durationMs" $v.loopInterval) -}}
{{- if lt $ttl 2000.0 -}}
{{- fail (printf "ttl (%s) is too short: the minimum is 2s" (toString $v.ttl)) -}}
{{- end -}}
{{- if lt $loop 100.0 -}}
{{- fail (printf "loopInterval (%s) is too short: the minimum is 100ms" (toString $v.loopInterval)) -}}
{{- end -}}
{{- if lt $ttl (mulf $loop 3.0) -}}
{{- fail (printf "ttl (%s) must be at least 3 × loopInterval (%s): a primary must be able to miss one lease renewal and still fence itself before its lease expires (raise ttl or lower loopInterval)" (toString $v.ttl) (toString $v.loopInterval)) -}}
{{- end -}}
{{- if and $v.tls.requireClientCert (not $v.tls.enabled) -}}
{{- fail "tls.requireClientCert needs tls.enabled=true (client certificates are only checked over HTTPS)" -}}
{{- end -}}
{{- if eq $v.postgresql.superuserUsername $v.postgresql.replicationUsername -}}
{{- fail (printf "postgresql.replicationUsername (%q) must differ from postgresql.superuserUsername" $v.postgresql.replicationUsername) -}}
{{- end -}}
{{- range $ord, $p := $v.failoverPriority -}}
{{- if not (regexMatch "^[0-9]+$" (toString $ord)) -}}
{{- fail (printf "failoverPriority key %q is not a member ordinal: key it by the pod's number, e.g. --set failoverPriority.2=0 for pod <release>-2" (toString $ord)) -}}
{{- end -}}
{{- if ge (int $ord) $replicas -}}
{{- fail (printf "failoverPriority.%s names no member: the pods are numbered 0 to %d (replicas=%d)" (toString $ord) (sub $replicas 1) $replicas) -}}
{{- end -}}
{{- end -}}
{{- $cluster := include "holdfast.cluster" . -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" $cluster) -}}
{{- fail (printf "clusterName %q (default: the release name) is not a valid cluster name: use 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit" $cluster) -}}
{{- end -}}
{{- if gt (len .Release.Name) 52 -}}
{{- fail (printf "the release name %q is longer than 52 characters: it names the StatefulSet, whose pods need a controller-revision-hash label of at most 63" .Release.Name) -}}
{{- end -}}
{{- if $v.backup.enabled -}}
{{- include "holdfast.validateBackup" . -}}
{{- end -}}
{{- if $v.bootstrap.restore.enabled -}}
{{- include "holdfast.validateRestore" . -}}
{{- end -}}
{{- end -}}

{{/*
Backups (backup.enabled). Files under /etc/holdfast/backup/ come from the
users' Secrets (and the CA's ConfigMap) through the projected config volume;
the shared POSIX repository volume is mounted at holdfast.backupMount.
*/}}
{{- define "holdfast.backupMount" -}}
/var/lib/holdfast-backup
{{- end -}}

{{- define "holdfast.backupDir" -}}
/etc/holdfast/backup
{{- end -}}

{{/* The repository the agents use: backup.repository, or the POSIX mount. */}}
{{- define "holdfast.backupRepository" -}}
{{- $b := .Values.backup -}}
{{- if $b.repository -}}
{{- trimSuffix "/" $b.repository -}}
{{- else if $b.posix.existingClaim -}}
{{- include "holdfast.backupMount" . -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the members run pgBackRest's TLS server (backup.enabled,
tls.enabled and backup.tlsServer.enabled). A release upgraded with
--reuse-values from a chart without backup.tlsServer gets the defaults
(on, port 8432).
*/}}
{{- define "holdfast.backupTLSServer" -}}
{{- $ts := .Values.backup.tlsServer | default (dict) -}}
{{- if and .Values.backup.enabled .Values.tls.enabled (ternary $ts.enabled true (hasKey $ts "enabled")) -}}true{{- end -}}
{{- end -}}

{{- define "holdfast.backupTLSPort" -}}
{{- $ts := .Values.backup.tlsServer | default (dict) -}}
{{- int ($ts.port | default 8432) -}}
{{- end -}}

{{- define "holdfast.backupIsS3" -}}
{{- if hasPrefix "s3://" .Values.backup.repository -}}true{{- end -}}
{{- end -}}

{{/*
Checks of the backup values, run only with backup.enabled (so the defaults
render exactly as before). The agent checks the rendered section again
(internal/config/backup.go); these say which chart value to set.
*/}}
{{- define "holdfast.validateBackup" -}}
{{- $b := .Values.backup -}}
{{- $s3 := $b.s3 -}}
{{- $mount := include "holdfast.backupMount" . -}}
{{- if and (not $b.repository) (not $b.posix.existingClaim) -}}
{{- fail (printf "backup.repository is required with backup.enabled=true: set an S3 bucket (--set backup.repository=s3://BUCKET/PATH with backup.s3.endpoint, backup.s3.region and backup.s3.existingSecret) or a shared ReadWriteMany volume (--set backup.posix.existingClaim=CLAIM; the repository is then %s)" $mount) -}}
{{- end -}}
{{- if include "holdfast.backupIsS3" . -}}
{{- $bucket := regexReplaceAll "^s3://([^/]*).*$" $b.repository "${1}" -}}
{{- if not (regexMatch "^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$" $bucket) -}}
{{- fail (printf "backup.repository %q: bucket %q is not a bucket name (3-63 lower-case letters, digits, '.' or '-'; write s3://BUCKET/PATH)" $b.repository $bucket) -}}
{{- end -}}
{{- if not $s3.endpoint -}}
{{- fail "backup.s3.endpoint is required for an s3:// backup.repository: host[:port] of the S3 API without a scheme, e.g. s3.us-east-1.amazonaws.com or minio.backup.svc:9000" -}}
{{- end -}}
{{- if not $s3.region -}}
{{- fail "backup.s3.region is required for an s3:// backup.repository: the region requests are signed for (us-east-1 for most self-hosted servers)" -}}
{{- end -}}
{{- if not $s3.existingSecret -}}
{{- fail (printf "backup.s3.existingSecret is required for an s3:// backup.repository: the name of an existing Secret with the access key id (key %q, backup.s3.accessKeyIdKey) and the secret access key (key %q, backup.s3.secretAccessKeyKey); the chart never takes the credentials as values" $s3.accessKeyIdKey $s3.secretAccessKeyKey) -}}
{{- end -}}
{{- if $b.posix.existingClaim -}}
{{- fail (printf "backup.posix.existingClaim (%q) is set but backup.repository is an S3 bucket (%s): unset one of them" $b.posix.existingClaim $b.repository) -}}
{{- end -}}
{{- if and $s3.caSecret $s3.caConfigMap -}}
{{- fail (printf "backup.s3.caSecret (%q) and backup.s3.caConfigMap (%q) are both set: give the endpoint's CA once" $s3.caSecret $s3.caConfigMap) -}}
{{- end -}}
{{- else -}}
{{- $repo := include "holdfast.backupRepository" . -}}
{{- if not $b.posix.existingClaim -}}
{{- fail (printf "backup.repository %q is a directory but backup.posix.existingClaim is not set: every member must reach the same repository, so a directory repository lives on a shared ReadWriteMany volume (--set backup.posix.existingClaim=CLAIM, mounted at %s), or use an s3:// bucket" $b.repository $mount) -}}
{{- end -}}
{{- if or (not (regexMatch (printf "^%s(/[^/]+)*$" $mount) $repo)) (regexMatch "/\\.\\.?(/|$)" $repo) -}}
{{- fail (printf "backup.repository %q is not on the shared volume: backup.posix.existingClaim is mounted at %s; leave backup.repository empty to use that directory, or name an existing directory under it (e.g. %s/main)" $b.repository $mount $mount) -}}
{{- end -}}
{{- if or $s3.endpoint $s3.region $s3.uriStyle $s3.existingSecret $s3.caSecret $s3.caConfigMap $s3.tlsSkipVerify -}}
{{- fail (printf "backup.s3.* is set but backup.repository (%q) is not an s3:// bucket: unset the backup.s3 values or use s3://BUCKET/PATH" $repo) -}}
{{- end -}}
{{- end -}}
{{- with $b.schedule -}}
{{- $seen := dict -}}
{{- range $part := splitList "," . -}}
{{- $kv := splitList "=" $part -}}
{{- $k := trim (first $kv) -}}
{{- if hasKey $seen $k -}}
{{- fail (printf "backup.schedule %q gives %s twice" $b.schedule $k) -}}
{{- end -}}
{{- $_ := set $seen $k true -}}
{{- $d := trim (last $kv) -}}
{{- if not (regexMatch "^([0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h))+$" $d) -}}
{{- fail (printf "backup.schedule %q: %s=%s is not a duration (write e.g. full=168h,incr=1h)" $b.schedule $k $d) -}}
{{- end -}}
{{- if lt (float64 (include "holdfast.durationMs" $d)) 60000.0 -}}
{{- fail (printf "backup.schedule %q: %s=%s is shorter than 1m" $b.schedule $k $d) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A bootstrap from a backup (bootstrap.restore.enabled). The source's secret
files come under /etc/holdfast/restore/; its POSIX repository volume is
mounted at holdfast.restoreMount.
*/}}
{{- define "holdfast.restoreMount" -}}
/var/lib/holdfast-restore
{{- end -}}

{{- define "holdfast.restoreDir" -}}
/etc/holdfast/restore
{{- end -}}

{{/* The source repository: bootstrap.restore.repository, or the mount. */}}
{{- define "holdfast.restoreRepository" -}}
{{- $r := .Values.bootstrap.restore -}}
{{- if $r.repository -}}
{{- trimSuffix "/" $r.repository -}}
{{- else if $r.posix.existingClaim -}}
{{- include "holdfast.restoreMount" . -}}
{{- end -}}
{{- end -}}

{{- define "holdfast.restoreIsS3" -}}
{{- if hasPrefix "s3://" .Values.bootstrap.restore.repository -}}true{{- end -}}
{{- end -}}

{{/*
Checks of the bootstrap.restore values (only when enabled). The agent checks
the rendered section again (internal/config/restore.go).
*/}}
{{- define "holdfast.validateRestore" -}}
{{- $r := .Values.bootstrap.restore -}}
{{- $s3 := $r.s3 -}}
{{- $mount := include "holdfast.restoreMount" . -}}
{{- if and (not $r.repository) (not $r.posix.existingClaim) -}}
{{- fail (printf "bootstrap.restore.repository is required with bootstrap.restore.enabled=true: the source's S3 bucket (s3://BUCKET/PATH with bootstrap.restore.s3.endpoint, region and existingSecret) or a volume holding its repository (--set bootstrap.restore.posix.existingClaim=CLAIM; the repository is then %s)" $mount) -}}
{{- end -}}
{{- if not $r.stanza -}}
{{- fail "bootstrap.restore.stanza is required: the source cluster's stanza (its backup.stanza, or its cluster name when that was empty; holdfast ctl backups on the source lists it)" -}}
{{- end -}}
{{- $own := .Values.backup.stanza | default (include "holdfast.cluster" .) -}}
{{- if and .Values.backup.enabled (eq $r.stanza $own) -}}
{{- fail (printf "bootstrap.restore.stanza %q is also this cluster's backup stanza: the restored cluster is new and must never archive into its source's stanza; set backup.stanza to a new name" $r.stanza) -}}
{{- end -}}
{{- $targets := 0 -}}
{{- range (list $r.targetTime $r.targetLSN $r.targetXID) -}}{{- if . -}}{{- $targets = add1 $targets -}}{{- end -}}{{- end -}}
{{- if gt $targets 1 -}}
{{- fail "bootstrap.restore: give at most one of targetTime, targetLSN and targetXID (none: the latest point)" -}}
{{- end -}}
{{- if include "holdfast.restoreIsS3" . -}}
{{- if not $s3.endpoint -}}
{{- fail "bootstrap.restore.s3.endpoint is required for an s3:// bootstrap.restore.repository: host[:port] of the S3 API without a scheme" -}}
{{- end -}}
{{- if not $s3.region -}}
{{- fail "bootstrap.restore.s3.region is required for an s3:// bootstrap.restore.repository (us-east-1 for most self-hosted servers)" -}}
{{- end -}}
{{- if not $s3.existingSecret -}}
{{- fail (printf "bootstrap.restore.s3.existingSecret is required for an s3:// bootstrap.restore.repository: an existing Secret with the access key id (key %q) and the secret access key (key %q)" $s3.accessKeyIdKey $s3.secretAccessKeyKey) -}}
{{- end -}}
{{- if $r.posix.existingClaim -}}
{{- fail (printf "bootstrap.restore.posix.existingClaim (%q) is set but bootstrap.restore.repository is an S3 bucket (%s): unset one of them" $r.posix.existingClaim $r.repository) -}}
{{- end -}}
{{- if and $s3.caSecret $s3.caConfigMap -}}
{{- fail "bootstrap.restore.s3.caSecret and caConfigMap are both set: give the endpoint's CA once" -}}
{{- end -}}
{{- else -}}
{{- $repo := include "holdfast.restoreRepository" . -}}
{{- if not $r.posix.existingClaim -}}
{{- fail (printf "bootstrap.restore.repository %q is a directory but bootstrap.restore.posix.existingClaim is not set: name the volume that holds the source's repository (mounted at %s), or use an s3:// bucket" $r.repository $mount) -}}
{{- end -}}
{{- if not (or (eq $repo $mount) (hasPrefix (printf "%s/" $mount) $repo)) -}}
{{- fail (printf "bootstrap.restore.repository %q is not on the volume bootstrap.restore.posix.existingClaim, mounted at %s: leave it empty for that directory or name one under it" $r.repository $mount) -}}
{{- end -}}
{{- if or $s3.endpoint $s3.region $s3.uriStyle $s3.existingSecret $s3.caSecret $s3.caConfigMap $s3.tlsSkipVerify -}}
{{- fail (printf "bootstrap.restore.s3.* is set but bootstrap.restore.repository (%q) is not an s3:// bucket" $repo) -}}
{{- end -}}
{{- end -}}
{{- end -}}
