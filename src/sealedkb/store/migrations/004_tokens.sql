-- Bearer tokens for the HTTP MCP server. Only a SHA-256 hash of each token is
-- stored (tokens carry 256 random bits, so a fast hash is enough); the token
-- itself is printed once at creation.
CREATE TABLE IF NOT EXISTS kb_tokens (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    token_hash   bytea NOT NULL UNIQUE,
    role         text NOT NULL CHECK (role IN ('reader', 'writer', 'admin')),
    namespaces   text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS kb_tokens_active_name ON kb_tokens (name) WHERE revoked_at IS NULL;
