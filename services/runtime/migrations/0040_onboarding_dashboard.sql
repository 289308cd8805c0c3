-- Onboarding dashboard: one row per request, a projection of the onboarding-* streams
-- (services/onboarding/projection.py). Droppable and rebuildable from the event log.
CREATE TABLE IF NOT EXISTS onboarding_dashboard (
    request_id          text        PRIMARY KEY,
    kind                text        NOT NULL,
    structure_name      text        NOT NULL,
    structure_sts11     text        NOT NULL,
    municipality_istat  text        NOT NULL,
    status              text        NOT NULL,
    required            integer     NOT NULL DEFAULT 0,
    present             integer     NOT NULL DEFAULT 0,
    compliant           integer     NOT NULL DEFAULT 0,
    missing             jsonb       NOT NULL DEFAULT '[]',
    pending             jsonb       NOT NULL DEFAULT '[]',
    non_compliant       jsonb       NOT NULL DEFAULT '{}',
    summary             text        NOT NULL DEFAULT '',
    opened_at           timestamptz NOT NULL,
    completed_on        date,
    taken_on            date,
    expected_from       date,
    expected_to         date,
    switch_date         date,
    switch_window       text,
    switch_note         text,
    last_version        integer     NOT NULL,
    updated_at          timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS onboarding_dashboard_status ON onboarding_dashboard (status, opened_at);
