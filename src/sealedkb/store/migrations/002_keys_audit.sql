-- sealedkb schema v2: the audit trail, and which data key sealed each entry.

-- Tamper-evident audit trail (docs/DESIGN.md §5, docs/FORMATS.md "Audit event").
-- seq is gapless (appends serialise on an advisory lock); hash chains each event
-- to the one before: hash = SHA-256(prev_hash || canonical_json(event)).
-- Never holds plaintext or key material: ids, names, counts and dates only.
CREATE TABLE IF NOT EXISTS kb_audit (
    seq         bigint PRIMARY KEY,
    time        timestamptz NOT NULL,
    principal   text NOT NULL,
    action      text NOT NULL,
    key_uri     text,
    namespace   text,
    outcome     text NOT NULL,
    error_code  text,
    request_id  text,
    details     jsonb NOT NULL DEFAULT '{}',
    prev_hash   bytea NOT NULL,
    hash        bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS kb_audit_time ON kb_audit (time);
CREATE INDEX IF NOT EXISTS kb_audit_action ON kb_audit (action, time);

-- The data key a sealed entry document names: bytes 1..16 of sealed field v1
-- (docs/FORMATS.md §3). Generated, so it always matches the stored value and no
-- writer has to maintain it; it lets re-encryption and status find the rows
-- still sealed under a retired data key without reading every document.
ALTER TABLE kb_entries ADD COLUMN IF NOT EXISTS data_key_id uuid
    GENERATED ALWAYS AS (
        CASE WHEN doc_sealed IS NOT NULL AND length(doc_sealed) >= 17
                  AND get_byte(doc_sealed, 0) = 1
             THEN encode(substring(doc_sealed FROM 2 FOR 16), 'hex')::uuid
        END
    ) STORED;
CREATE INDEX IF NOT EXISTS kb_entries_data_key ON kb_entries (data_key_id);
