-- The data key a sealed exact embedding names (bytes 1..16 of sealed field v1), as
-- data_key_id is for the sealed document: re-encryption and status find the
-- embeddings still sealed under a retired data key without reading them.
ALTER TABLE kb_entries ADD COLUMN IF NOT EXISTS embedding_key_id uuid
    GENERATED ALWAYS AS (
        CASE WHEN embedding_sealed IS NOT NULL AND length(embedding_sealed) >= 17
                  AND get_byte(embedding_sealed, 0) = 1
             THEN encode(substring(embedding_sealed FROM 2 FOR 16), 'hex')::uuid
        END
    ) STORED;
CREATE INDEX IF NOT EXISTS kb_entries_embedding_key ON kb_entries (embedding_key_id);
