-- OpenID Connect login of the console (services/console/oidc.py). A user who logs in through the
-- identity provider is kept in console_user with origin 'oidc' (role, enti and structure refreshed
-- from the claims at every login, no usable password); a local user's name is never taken over.
-- console_oidc_login holds one login in progress: found by the SHA-256 of its state, used once.
ALTER TABLE console_user ADD COLUMN origin text NOT NULL DEFAULT 'local' CHECK (origin IN ('local', 'oidc'));

CREATE TABLE console_oidc_login (
    state_sha256  bytea       PRIMARY KEY,
    nonce         text        NOT NULL,
    code_verifier text        NOT NULL,
    next_url      text        NOT NULL,
    expires_at    timestamptz NOT NULL
);
