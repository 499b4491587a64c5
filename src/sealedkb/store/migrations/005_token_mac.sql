-- Bearer-token rows become authenticated: ``token_hash`` is a keyed hash (a MAC
-- under the key provider's audit key, which PostgreSQL never sees) and ``mac``
-- authenticates the row's fields (id, name, role, namespaces, expiry, revocation).
-- hash_scheme 1: the unkeyed SHA-256 of earlier versions (plaintext knowledge bases,
-- and encrypted ones until ``sealedkb token rekey``); 2: keyed + MACed.
ALTER TABLE kb_tokens ADD COLUMN IF NOT EXISTS hash_scheme smallint NOT NULL DEFAULT 1
    CHECK (hash_scheme IN (1, 2));
ALTER TABLE kb_tokens ADD COLUMN IF NOT EXISTS mac bytea;
