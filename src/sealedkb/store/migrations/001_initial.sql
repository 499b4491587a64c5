-- sealedkb schema v1. The store sees ciphertext (bytea) and keyed tokens in
-- encrypted mode; the *_plain columns are used only in plaintext mode
-- (--encryption off) and by the migration source. A row is either sealed or
-- plaintext, never both (kb_entries_one_form).
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE IF NOT EXISTS kb_meta (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS kb_data_keys (
    id          uuid PRIMARY KEY,
    namespace   text NOT NULL,
    purpose     text NOT NULL CHECK (purpose IN ('content', 'index', 'vector', 'snapshot')),
    kms_key_uri text NOT NULL,
    wrapped     bytea NOT NULL,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);
-- At most one active data key per namespace and purpose; a racing insert loses.
CREATE UNIQUE INDEX IF NOT EXISTS kb_data_keys_one_active
    ON kb_data_keys (namespace, purpose) WHERE active;

CREATE TABLE IF NOT EXISTS kb_entries (
    id              uuid PRIMARY KEY,
    namespace       text NOT NULL,
    entry_type      text NOT NULL CHECK (entry_type IN
                        ('note', 'doc', 'decision', 'pattern', 'runbook', 'lesson', 'constraint')),
    -- encrypted mode: one sealed document (format v1) holding title, content,
    -- source, metadata and tags; keyed tokens for tag filtering
    doc_sealed      bytea,
    tag_tokens      text[] NOT NULL DEFAULT '{}',
    -- plaintext mode only
    title_plain     text,
    content_plain   text,
    source_plain    text,
    metadata_plain  jsonb,
    tags_plain      text[],
    verified        boolean NOT NULL DEFAULT false,
    archived        boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    version         integer NOT NULL DEFAULT 1,
    deleted_at      timestamptz,
    CONSTRAINT kb_entries_one_form CHECK (
        (doc_sealed IS NOT NULL AND content_plain IS NULL AND title_plain IS NULL
            AND source_plain IS NULL AND metadata_plain IS NULL AND tags_plain IS NULL)
        OR (doc_sealed IS NULL AND content_plain IS NOT NULL)
    )
);
-- Ciphertext does not compress: skip pglz, and keep rows up to ~8 KB in the heap
-- page instead of TOASTing them at 2 KB (saves a TOAST fetch per read).
ALTER TABLE kb_entries ALTER COLUMN doc_sealed SET STORAGE EXTERNAL;
ALTER TABLE kb_entries SET (toast_tuple_target = 8160);
CREATE INDEX IF NOT EXISTS kb_entries_ns_created
    ON kb_entries (namespace, created_at DESC) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS kb_entries_tag_tokens ON kb_entries USING gin (tag_tokens);
CREATE INDEX IF NOT EXISTS kb_entries_tags_plain ON kb_entries USING gin (tags_plain);
