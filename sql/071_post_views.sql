-- View counts (docs/write-pipeline.md): the distinct viewers of a post per UTC day, counted in Redis and
-- written here in bulk by the view flusher as absolute values (a repeated flush is harmless). A post's
-- view_count is the sum of its days.
CREATE TABLE IF NOT EXISTS content.post_view_days (
    post_id UUID NOT NULL REFERENCES content.posts (id) ON DELETE CASCADE,
    day     DATE NOT NULL,
    views   BIGINT NOT NULL CHECK (views >= 0),
    PRIMARY KEY (post_id, day)
);
