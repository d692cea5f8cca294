# Vault / OpenBao policy for servicekey-operator: least privilege for the chart's defaults
# (vault.kvMount=secret, vault.transitMount=transit, vault.pathPrefix=servicekeys).
# If you change those, or a ServiceKey sets spec.vault.mount / spec.vault.path outside them, change the
# paths below to match; the operator reports Ready=False, reason VaultPermissionDenied, until then.
#
#   vault policy write servicekey-operator deploy/vault/servicekey-operator-policy.hcl
#
# Path matching reminder: a trailing '*' is a prefix match (it also matches deeper paths, with '/'),
# and '*' anywhere else is not a wildcard at all.

# ---------------------------------------------------------------------------------------------------
# KV version 2 (spec.vault.engine: kv). Keys live at secret/<prefix>/<namespace>/<name>; the API splits
# that into data/ (the key material, with check-and-set writes) and metadata/ (versions = key history,
# custom_metadata = the ownership mark, listing, and the permanent delete of deletionPolicy: Delete).
# ---------------------------------------------------------------------------------------------------

# Read the current and previous versions; write a new version with check-and-set (create for the
# first version, update after). LIST is served on metadata/, so it is not granted here.
path "secret/data/servicekeys/*" {
  capabilities = ["create", "read", "update", "delete"]
}

# Read the version history and custom_metadata (adoption / conflict check), write custom_metadata,
# list keys, and delete all versions when a ServiceKey with deletionPolicy: Delete is deleted.
path "secret/metadata/servicekeys/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

# ---------------------------------------------------------------------------------------------------
# Transit (spec.vault.engine: transit). Non-exportable keys named <prefix>.<namespace>.<name>.<type>
# (the Vault path with '/' turned into '.', plus the key type, e.g. servicekeys.payments.signing.ecdsa-p256);
# their record (history, rotation requests, ownership) is the KV secret above. The prefix glob covers
# the key itself (create, read its public keys and versions, delete) and its sub-paths
# transit/keys/<key>/rotate (update: a new key version) and transit/keys/<key>/config (update:
# deletion_allowed before a Delete, min_decryption_version for retainPrevious).
# ---------------------------------------------------------------------------------------------------
path "transit/keys/servicekeys.*" {
  capabilities = ["create", "read", "update", "delete"]
}

# Deliberately not granted: transit/sign/*, transit/verify/*, transit/export/* and transit/backup/*.
# The operator never signs and never exports a key; signers get their own, read-or-sign-only policy
# (see deploy/examples/signer-deployment.yaml).

# ---------------------------------------------------------------------------------------------------
# The operator's own token: keep it alive and know its TTL (kubernetes / approle logins are
# unauthenticated endpoints and need no policy).
# ---------------------------------------------------------------------------------------------------
path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
