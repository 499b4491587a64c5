-- sealedkb schema 008: which index data key a row's search columns were rebuilt under.
-- `sealedkb reindex` rotates a namespace's index and vector data keys and rebuilds
-- every row's keyword tokens, tag tokens, fingerprint and encrypted vector under the
-- new ones, recording the new index key's id here; a rerun rebuilds only the rows
-- that do not name the namespace's active index key yet. Any other change of those
-- columns (add, update, reembed) clears it, so a row a writer indexed under a key it
-- still had cached is rebuilt again by the next run. The id names a kb_data_keys row;
-- it says nothing about the entry.
ALTER TABLE kb_entries ADD COLUMN IF NOT EXISTS index_key_id uuid;
CREATE INDEX IF NOT EXISTS kb_entries_index_key ON kb_entries (namespace, index_key_id);

CREATE OR REPLACE FUNCTION kb_entries_index_key_reset() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.index_key_id IS NOT DISTINCT FROM OLD.index_key_id
       AND (NEW.kw_tokens IS DISTINCT FROM OLD.kw_tokens
            OR NEW.tag_tokens IS DISTINCT FROM OLD.tag_tokens
            OR NEW.embedding_enc IS DISTINCT FROM OLD.embedding_enc) THEN
        NEW.index_key_id := NULL;
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS kb_entries_index_key_reset ON kb_entries;
CREATE TRIGGER kb_entries_index_key_reset BEFORE UPDATE ON kb_entries
    FOR EACH ROW EXECUTE FUNCTION kb_entries_index_key_reset();
