# Vault / OpenBao policy for servicekey-operator: least privilege for the chart's defaults
# (vault.kvMount=secret, vault.transitMount=transit, vault.pathPrefix=servicekeys).
# If you change those, or a ServiceKey sets spec.vault.mount / spec.vault.path outside them, change the
# paths below to match; the operator reports Ready=False, reason VaultPermissionDenied, until then.
#
#   vault policy write servicekey-operator deploy/vault/servicekey-operator-policy.hcl
#
# Path matching reminder: a trailing '*' is a prefix match (it also matches deeper paths, with '/'),
# and '*' anywhere else is not a wildcard at all.
#
# Before it reads or writes a key the operator also asks which engine its KV mount is
# (GET sys/internal/ui/mounts/secret: a KV version 1 mount is refused). That needs no rule: Vault answers it
# for any token with a capability below the mount.

# ---------------------------------------------------------------------------------------------------
# KV version 2 (spec.vault.engine: kv). Keys live at secret/<prefix>/<namespace>/<name>; the API splits
# that into data/ (the key material, with check-and-set writes) and metadata/ (versions = key history,
# custom_metadata = the ownership mark, listing, and the permanent delete of deletionPolicy: Delete).
# ---------------------------------------------------------------------------------------------------

# Read the current and previous versions; write a new version with check-and-set (create for the
# first version, update after). Soft deletes (DELETE on data/) are never made.
path "secret/data/servicekeys/*" {
  capabilities = ["create", "read", "update"]
}

# Read the version history and custom_metadata (ownership, Transit claims), write custom_metadata (create
# when a Transit key is claimed before its record's first version, update after), and delete all versions
# when a ServiceKey with deletionPolicy: Delete is deleted. Never listed.
path "secret/metadata/servicekeys/*" {
  capabilities = ["create", "read", "update", "delete"]
}

# ---------------------------------------------------------------------------------------------------
# Transit (spec.vault.engine: transit). Non-exportable keys named <prefix>.<namespace>.<name>.<type>
# (the Vault path with '/' turned into '.', '.' and '_' escaped as '_d' and '_u', plus the key type, e.g.
# servicekeys.payments.signing.ecdsa-p256; a vault.pathPrefix with '.' or '_' is escaped the same way, so
# write the glob below from the escaped prefix); their record (history, rotation requests, ownership) is the KV
# secret above. The operator creates a key (an update of transit/keys/<key>: Transit has no separate
# create), reads its public keys and versions, deletes it, and updates transit/keys/<key>/rotate (a new
# version) and transit/keys/<key>/config (min_decryption_version for retainPrevious, deletion_allowed before
# a Delete).
# A prefix glob is the only way to limit the keys to the operator's prefix, and it also covers
# transit/keys/<key>/trim, which the operator never calls: Vault's ACL globs cannot leave out one sub-path
# below a prefix. To remove even that, give the operator a Transit mount of its own (vault.transitMount)
# and replace this block with "transit/keys/+" (read, update, delete) and "transit/keys/+/rotate",
# "transit/keys/+/config" (update).
# ---------------------------------------------------------------------------------------------------
path "transit/keys/servicekeys.*" {
  capabilities = ["read", "update", "delete"]
}

# Deliberately not granted: transit/sign/*, transit/verify/*, transit/export/* and transit/backup/*.
# The operator never signs and never exports a key; signers get their own, read-or-sign-only policy
# (see deploy/examples/signer-deployment.yaml).

# ---------------------------------------------------------------------------------------------------
# The operator's own token: keep it alive and know its TTL (kubernetes / approle logins are
# unauthenticated endpoints and need no policy). These are the two paths of Vault's "default" policy the
# operator uses, so create its role without it: token_no_default_policy=true.
# ---------------------------------------------------------------------------------------------------
path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
