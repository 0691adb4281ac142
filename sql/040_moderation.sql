-- Reports, moderator actions and the audit trail (the seed lists admin_actions and audit_logs without DDL).

CREATE TABLE IF NOT EXISTS moderation.reports (
    id          UUID PRIMARY KEY,
    actor_id    UUID NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    target_type SMALLINT NOT NULL CHECK (target_type IN (0, 1, 2, 3)),  -- 0 user, 1 post, 2 comment, 3 message
    target_id   UUID NOT NULL,
    reason      TEXT NOT NULL,
    state       SMALLINT NOT NULL DEFAULT 0 CHECK (state IN (0, 1, 2)),  -- 0 pending, 1 reviewed, 2 resolved
    resolved_by UUID REFERENCES auth.users (id) ON DELETE SET NULL,
    resolved_at TIMESTAMPTZ,
    resolution  TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_reports_actor ON moderation.reports (actor_id);
CREATE INDEX IF NOT EXISTS idx_reports_created ON moderation.reports (created_at);
CREATE INDEX IF NOT EXISTS idx_reports_state ON moderation.reports (state, id DESC);

CREATE TABLE IF NOT EXISTS moderation.admin_actions (
    id          UUID PRIMARY KEY,
    admin_id    UUID NOT NULL REFERENCES auth.users (id),
    action      TEXT NOT NULL,
    target_type SMALLINT,
    target_id   UUID,
    report_id   UUID REFERENCES moderation.reports (id) ON DELETE SET NULL,
    details     JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_admin_actions_admin ON moderation.admin_actions (admin_id, created_at DESC);

CREATE TABLE IF NOT EXISTS moderation.audit_logs (
    id         UUID PRIMARY KEY,
    actor_id   UUID,
    action     TEXT NOT NULL,
    entity     TEXT NOT NULL,
    entity_id  UUID,
    data       JSONB NOT NULL DEFAULT '{}'::jsonb,
    ip         INET,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_audit_logs_entity ON moderation.audit_logs (entity, entity_id);
CREATE INDEX IF NOT EXISTS idx_audit_logs_created ON moderation.audit_logs (created_at);
