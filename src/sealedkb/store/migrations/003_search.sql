-- sealedkb schema 003: hybrid search and import (the search columns).
-- Encrypted mode: keyword index of keyed blind tokens (kw_tokens), DCPE
-- ciphertexts of the embeddings (embedding_enc, searched by HNSW) with the exact
-- embeddings sealed beside them (embedding_sealed). Plaintext mode (the
-- baseline): kw_plain is to_tsvector over the plaintext columns, embedding_plain
-- the plain vector. fingerprint: keyed HMAC (encrypted) or sha256 (plaintext) of
-- the normalised content, for dedup. import_key / import_hash: keyed identity of
-- an imported file and of its bytes, so a re-import finds and compares its chunks.
ALTER TABLE kb_entries
    ADD COLUMN IF NOT EXISTS kw_tokens        tsvector,
    ADD COLUMN IF NOT EXISTS kw_plain         tsvector GENERATED ALWAYS AS (
        CASE WHEN content_plain IS NULL THEN NULL
             ELSE setweight(to_tsvector('english'::regconfig, coalesce(title_plain, '')), 'A')
                  || to_tsvector('english'::regconfig, content_plain)
        END) STORED,
    ADD COLUMN IF NOT EXISTS embedding_enc    vector(384),
    ADD COLUMN IF NOT EXISTS embedding_sealed bytea,
    ADD COLUMN IF NOT EXISTS embedding_plain  vector(384),
    ADD COLUMN IF NOT EXISTS embed_model      text,
    ADD COLUMN IF NOT EXISTS embed_dim        integer,
    ADD COLUMN IF NOT EXISTS fingerprint      text,
    ADD COLUMN IF NOT EXISTS import_key       text,
    ADD COLUMN IF NOT EXISTS import_hash      text;

-- Sealed exact embeddings do not compress.
ALTER TABLE kb_entries ALTER COLUMN embedding_sealed SET STORAGE EXTERNAL;

-- A row is sealed or plaintext, never both, and that now covers the search columns.
ALTER TABLE kb_entries DROP CONSTRAINT IF EXISTS kb_entries_one_form;
ALTER TABLE kb_entries ADD CONSTRAINT kb_entries_one_form CHECK (
    (doc_sealed IS NOT NULL AND content_plain IS NULL AND title_plain IS NULL
        AND source_plain IS NULL AND metadata_plain IS NULL AND tags_plain IS NULL
        AND embedding_plain IS NULL)
    OR (doc_sealed IS NULL AND content_plain IS NOT NULL
        AND kw_tokens IS NULL AND embedding_enc IS NULL AND embedding_sealed IS NULL)
);
ALTER TABLE kb_entries ADD CONSTRAINT kb_entries_embedding_pair CHECK (
    (embedding_enc IS NULL) = (embedding_sealed IS NULL)
);

CREATE INDEX IF NOT EXISTS kb_entries_kw_tokens ON kb_entries USING gin (kw_tokens);
CREATE INDEX IF NOT EXISTS kb_entries_kw_plain ON kb_entries USING gin (kw_plain);
CREATE INDEX IF NOT EXISTS kb_entries_embedding_enc
    ON kb_entries USING hnsw (embedding_enc vector_cosine_ops);
CREATE INDEX IF NOT EXISTS kb_entries_embedding_plain
    ON kb_entries USING hnsw (embedding_plain vector_cosine_ops);
-- Dedup: one live entry per content fingerprint and namespace (a forced duplicate
-- is stored without a fingerprint).
CREATE UNIQUE INDEX IF NOT EXISTS kb_entries_fingerprint
    ON kb_entries (namespace, fingerprint)
    WHERE deleted_at IS NULL AND fingerprint IS NOT NULL;
CREATE INDEX IF NOT EXISTS kb_entries_import_key
    ON kb_entries (namespace, import_key)
    WHERE deleted_at IS NULL AND import_key IS NOT NULL;
