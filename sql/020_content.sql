-- Posts, comments, likes and media metadata.
-- Fixes to the seed: media gets the summary's columns (mime, size, width, height, processing_state),
-- trailing commas removed, likes.target_type checked, cursor indexes on (…, id DESC) since ids are UUIDv7.

CREATE TABLE IF NOT EXISTS content.media (
    id               UUID PRIMARY KEY,
    owner_id         UUID NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    storage_path     TEXT NOT NULL,
    mime             TEXT NOT NULL,
    size             BIGINT NOT NULL CHECK (size >= 0),
    width            INT CHECK (width > 0),
    height           INT CHECK (height > 0),
    processing_state SMALLINT NOT NULL DEFAULT 0,  -- 0 pending, 1 done
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_media_owner ON content.media (owner_id);
CREATE INDEX IF NOT EXISTS idx_media_created ON content.media (created_at);

CREATE TABLE IF NOT EXISTS content.posts (
    id         UUID PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    content    TEXT,
    media_ids  UUID[] NOT NULL DEFAULT '{}',
    meta       JSONB NOT NULL DEFAULT '{}'::jsonb,   -- mentions, hashtags
    visibility SMALLINT NOT NULL DEFAULT 0 CHECK (visibility IN (0, 1)),  -- 0 public, 1 followers only
    location   TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_posts_user_created ON content.posts (user_id, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_posts_user_id_desc ON content.posts (user_id, id DESC);
CREATE INDEX IF NOT EXISTS idx_posts_meta ON content.posts USING GIN (meta);
CREATE OR REPLACE TRIGGER posts_touch BEFORE UPDATE ON content.posts
    FOR EACH ROW EXECUTE FUNCTION logic.touch_updated_at();

CREATE TABLE IF NOT EXISTS content.comments (
    id         UUID PRIMARY KEY,
    post_id    UUID NOT NULL REFERENCES content.posts (id) ON DELETE CASCADE,
    user_id    UUID NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    content    TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_comments_post_created ON content.comments (post_id, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_comments_post_id_desc ON content.comments (post_id, id DESC);

CREATE TABLE IF NOT EXISTS content.likes (
    id          UUID PRIMARY KEY,
    target_type SMALLINT NOT NULL CHECK (target_type IN (0, 1, 2)),  -- 0 post, 1 message, 2 comment
    target_id   UUID NOT NULL,
    user_id     UUID NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (target_type, target_id, user_id)
);
CREATE INDEX IF NOT EXISTS idx_likes_target ON content.likes (target_type, target_id);
