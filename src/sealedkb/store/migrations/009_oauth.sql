-- sealedkb schema 009: OAuth 2.1 for hosted MCP clients (kb/oauth.py, adapters/oauth/).
-- Like kb_tokens, nothing here is usable as stored: client secrets and every token
-- (pending consent request, authorization code, access and refresh token) are kept as
-- keyed hashes under the key provider's MAC key, and each row carries a MAC over the
-- fields that grant anything, so a database writer can neither mint nor widen a grant.
-- hash_scheme 1: unkeyed SHA-256, no MAC (plaintext knowledge bases); 2: keyed + MACed.
CREATE TABLE IF NOT EXISTS kb_oauth_clients (
    client_id   text PRIMARY KEY,
    secret_hash bytea,
    metadata    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    hash_scheme smallint NOT NULL CHECK (hash_scheme IN (1, 2)),
    mac         bytea
);

CREATE TABLE IF NOT EXISTS kb_oauth_grants (
    id          uuid PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('request', 'code', 'access', 'refresh')),
    token_hash  bytea NOT NULL UNIQUE,
    client_id   text NOT NULL REFERENCES kb_oauth_clients (client_id) ON DELETE CASCADE,
    family_id   uuid NOT NULL,
    subject     text,
    role        text CHECK (role IN ('reader', 'writer', 'admin')),
    namespaces  text[] NOT NULL,
    resource    text,
    details     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz,
    hash_scheme smallint NOT NULL CHECK (hash_scheme IN (1, 2)),
    mac         bytea
);
CREATE INDEX IF NOT EXISTS kb_oauth_grants_family ON kb_oauth_grants (family_id);
CREATE INDEX IF NOT EXISTS kb_oauth_grants_expiry ON kb_oauth_grants (expires_at);
