-- Media files on S3-compatible storage (docs/media.md): the kind, the processed variants and a placeholder;
-- `storage_path` is now the key the upload was granted (media/<owner>/<media>/upload), chosen by nubo.
-- processing_state: 0 pending (upload granted, not completed), 1 ready.
-- Objects of deleted media rows (a post deleted, an account deleted by cascade, a purge) are listed in
-- content.media_deleted by a trigger, so `nubo db purge` deletes them even when the immediate delete failed.

ALTER TABLE content.media
    ADD COLUMN IF NOT EXISTS kind SMALLINT NOT NULL DEFAULT 0 CHECK (kind IN (0, 1)),  -- 0 image, 1 video
    ADD COLUMN IF NOT EXISTS variants JSONB NOT NULL DEFAULT '{}'::jsonb,  -- name -> {key, width, height, size, mime}
    ADD COLUMN IF NOT EXISTS placeholder TEXT;                             -- blurhash of an image

CREATE INDEX IF NOT EXISTS idx_media_state_created ON content.media (processing_state, created_at);

CREATE TABLE IF NOT EXISTS content.media_deleted (
    prefix     TEXT PRIMARY KEY,               -- media/<owner>/<media>/
    deleted_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION logic.media_forget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO content.media_deleted (prefix) VALUES ('media/' || OLD.owner_id || '/' || OLD.id || '/')
        ON CONFLICT (prefix) DO NOTHING;
    RETURN OLD;
END
$$;
CREATE OR REPLACE TRIGGER media_forget AFTER DELETE ON content.media
    FOR EACH ROW EXECUTE FUNCTION logic.media_forget();
