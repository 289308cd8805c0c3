-- The operator console (services/console): its local users, their server-side sessions, the API
-- keys of machine clients and the login throttle. Passwords and API keys are stored as argon2id
-- hashes only; a session is found by the SHA-256 of its cookie value, never by the value itself.
CREATE TABLE console_user (
    name          text        PRIMARY KEY,
    role          text        NOT NULL CHECK (role IN ('operator', 'structure', 'desk', 'ops', 'auditor', 'admin')),
    enti          text[]      NOT NULL DEFAULT '{}',
    structure     text,
    password_hash text        NOT NULL,
    disabled      boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE console_session (
    token_sha256 bytea       PRIMARY KEY,
    user_name    text        NOT NULL REFERENCES console_user (name),
    csrf_token   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX console_session_user ON console_session (user_name);

CREATE TABLE console_api_key (
    key_id      text        PRIMARY KEY,
    secret_hash text        NOT NULL,
    label       text        NOT NULL,
    enti        text[]      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked     boolean     NOT NULL DEFAULT false
);

-- One row per failed login attempt, by user name and by address; old rows are pruned on login.
CREATE TABLE console_login_failure (
    user_name  text        NOT NULL,
    address    text        NOT NULL,
    failed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX console_login_failure_user ON console_login_failure (user_name, failed_at);
CREATE INDEX console_login_failure_address ON console_login_failure (address, failed_at);

