-- The console's open live streams end at once when their access ends (services/console/access_watch.py): every
-- change that may end a user's access NOTIFYs the console processes on channel console_access, inside the
-- transaction that makes it, so the notice goes out when (and only if) it commits. The payload names what
-- changed, never a secret:
--   'session:<hex of token_sha256>'  a console_session row deleted (a logout, a disable, a new password, a login
--                                    that replaces the browser's earlier cookie); the table's own SHA-256 of the
--                                    cookie, never the cookie
--   'user:<name>'                    a console_user whose role, enti, structure or disabled flag changed (an OIDC
--                                    login with other claims, a disable, an enable)
--   'all'                            console_session truncated
-- Triggers rather than calls in the console's code: every path, including one not written yet and a row changed by
-- hand in psql, announces it.
CREATE FUNCTION console_session_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('console_access', 'session:' || encode(OLD.token_sha256, 'hex'));
    RETURN NULL;
END
$$;

CREATE TRIGGER console_session_ended AFTER DELETE ON console_session
    FOR EACH ROW EXECUTE FUNCTION console_session_ended();

CREATE FUNCTION console_sessions_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('console_access', 'all');
    RETURN NULL;
END
$$;

CREATE TRIGGER console_sessions_truncated AFTER TRUNCATE ON console_session
    FOR EACH STATEMENT EXECUTE FUNCTION console_sessions_truncated();

CREATE FUNCTION console_user_access_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('console_access', 'user:' || NEW.name);
    RETURN NULL;
END
$$;

CREATE TRIGGER console_user_access_changed AFTER UPDATE OF role, enti, structure, disabled ON console_user
    FOR EACH ROW WHEN (OLD.role IS DISTINCT FROM NEW.role OR OLD.enti IS DISTINCT FROM NEW.enti
                       OR OLD.structure IS DISTINCT FROM NEW.structure OR OLD.disabled IS DISTINCT FROM NEW.disabled)
    EXECUTE FUNCTION console_user_access_changed();
