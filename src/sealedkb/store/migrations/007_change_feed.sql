-- sealedkb schema 007: the change feed of kb_entries, and the memory search index.
-- kb_changes gets one row per inserted, updated or deleted kb_entries row, written
-- by a trigger in the same transaction as the change (no writer can forget it). A
-- process holding an in-memory search index (kb_meta.search_index = memory,
-- search/memory.py) reads the changes it has not applied before it answers a
-- search. xid is the writing transaction's id: a reader asks for every change
-- whose transaction was not yet finished at its last read, so a transaction that
-- commits late (with a lower seq) is never missed. The feed holds ids and
-- namespaces only, as kb_entries does.
CREATE TABLE IF NOT EXISTS kb_changes (
    seq        bigserial PRIMARY KEY,
    xid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    entry_id   uuid NOT NULL,
    namespace  text NOT NULL,
    op         text NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS kb_changes_xid ON kb_changes (xid);

CREATE OR REPLACE FUNCTION kb_entries_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO kb_changes (entry_id, namespace, op) VALUES (OLD.id, OLD.namespace, 'delete');
        RETURN OLD;
    END IF;
    INSERT INTO kb_changes (entry_id, namespace, op) VALUES (NEW.id, NEW.namespace, lower(TG_OP));
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS kb_entries_change ON kb_entries;
CREATE TRIGGER kb_entries_change AFTER INSERT OR UPDATE OR DELETE ON kb_entries
    FOR EACH ROW EXECUTE FUNCTION kb_entries_change();

-- Memory mode keeps the exact embedding sealed with no DCPE ciphertext beside it:
-- an encrypted vector still needs its sealed exact one, not the other way round.
ALTER TABLE kb_entries DROP CONSTRAINT IF EXISTS kb_entries_embedding_pair;
ALTER TABLE kb_entries ADD CONSTRAINT kb_entries_embedding_pair CHECK (
    embedding_enc IS NULL OR embedding_sealed IS NOT NULL
);

-- Sealed rows without search columns (memory mode): found cheaply when kb_meta has
-- lost its search_index setting (kb/knowledge_base.py refuses to fall back to
-- the server-side index over them).
CREATE INDEX IF NOT EXISTS kb_entries_memory_indexed ON kb_entries (id)
    WHERE doc_sealed IS NOT NULL AND kw_tokens IS NULL AND embedding_enc IS NULL;
