-- TS gateway: one row per submission part (one zip sent to Sistema TS with inviaFileMtom).
-- The key is the idempotency key of a send: (instance, part, zip_sha256); a re-formatted zip for
-- the same part is a new row. The gateway writes state 'sending' BEFORE calling TS and the
-- protocollo right after, so after a crash a 'sending' row without protocollo is reconciled with
-- EsitoInvii instead of being resent blindly. No credentials are ever stored here.
CREATE TABLE ts_submission_part (
    instance       bigint      NOT NULL,
    part           integer     NOT NULL CHECK (part >= 1),
    zip_sha256     text        NOT NULL CHECK (zip_sha256 ~ '^[0-9a-f]{64}$'),
    parts          integer     NOT NULL CHECK (parts >= part),
    file_name      text        NOT NULL CHECK (length(file_name) BETWEEN 6 AND 60),
    documents      integer     NOT NULL CHECK (documents >= 0),
    state          text        NOT NULL CHECK (state IN ('pending', 'sending', 'waiting_feedback', 'confirmed',
                                                         'confirmed_with_errors', 'rejected', 'unresolved')),
    protocollo     text        UNIQUE CHECK (protocollo ~ '^[0-9]{17}$'),
    stato          integer,
    reason         text,
    attempts       integer     NOT NULL DEFAULT 0,
    last_error     text,
    sending_since  timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance, part, zip_sha256),
    -- a protocollo exists exactly when TS accepted the file
    CHECK ((state IN ('pending', 'sending', 'unresolved')) = (protocollo IS NULL)
           OR (state = 'rejected' AND protocollo IS NULL))
);

-- The reconciliation and the pollers look for unfinished parts.
CREATE INDEX ts_submission_part_open ON ts_submission_part (state)
    WHERE state IN ('sending', 'waiting_feedback', 'unresolved');
