-- The characters of a text that a pattern does not allow, each once in order of appearance with its code point
-- (`И (U+0418), В (U+0412)`): the loader's CHARSET message (services/loader/checks.py unwritable_sql) names what
-- the fixed-width format cannot write, an invisible character too. `allowed` is a regular expression of the
-- characters that may stay (the formatter's writable ranges, computed by the loader from the formatter's own rule
-- and passed at each call: nothing of that rule is frozen here). A function, not the same query written into every
-- CHARSET rule: a load's checks statement held 17 such subqueries, which PostgreSQL set up at every execution
-- (~0.3 ms of a small load's checks, measured).
CREATE FUNCTION unwritable_characters(value text, allowed text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT string_agg(format('%s (U+%s)', u.c, upper(lpad(to_hex(ascii(u.c)), 4, '0'))), ', ' ORDER BY u.first)
    FROM (SELECT t.c, min(t.i) AS first
          FROM regexp_split_to_table(regexp_replace(value, allowed, '', 'g'), '') WITH ORDINALITY AS t(c, i)
          GROUP BY t.c) u
$$;
