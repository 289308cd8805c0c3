-- The instance read model keeps a deletion as data: who deleted it (deleted_by) and the reason given
-- (deletion_reason, NULL when none was), as the flows.instance-deleted event has them. It used to write
-- an English sentence into `summary` ('deleted by op.rossi: loaded twice'), which the Italian console
-- then showed as if it were the load's summary. Now a deletion leaves `summary` as it was: the text of
-- the last event that had one (services/runtime/read_models.py, _summary_of and _deletion_of).
--
-- The projection's DDL has the columns for new databases; this adds them to an existing table and moves
-- the rows written before into the new shape, so that `flows replay --verify` finds the live table equal
-- to the one rebuilt from the log: the deletion's columns from each instance's last deletion, and, where
-- `summary` still holds the sentence of that deletion, the summary the instance had before it (the same
-- rules as _summary_of: a format failure's reasons joined by '; ', Sistema TS's reason, else the event's
-- own summary; at most 1000 characters; NULL when no event had one).
ALTER TABLE IF EXISTS instance_list
    ADD COLUMN IF NOT EXISTS deleted_by text,
    ADD COLUMN IF NOT EXISTS deletion_reason text;
DO $$
BEGIN
    IF to_regclass('instance_list') IS NULL THEN
        RETURN;
    END IF;
    WITH deletion AS (
        SELECT DISTINCT ON (stream_id) stream_id, data
          FROM events
         WHERE type = 'flows.instance-deleted' AND stream_id LIKE 'instance-%'
         ORDER BY stream_id, version DESC)
    UPDATE instance_list l
       SET deleted_by = coalesce(d.data->>'deleted_by', 'None'),  -- str() of the value, as _deletion_of
           deletion_reason = nullif(d.data->>'reason', ''),
           summary = CASE
               WHEN l.summary = 'deleted by ' || coalesce(d.data->>'deleted_by', 'None') || ': '
                                || coalesce(nullif(d.data->>'reason', ''), 'no reason given')
               THEN (SELECT s.text
                       FROM (SELECT e.version,
                                    CASE WHEN e.type = 'flows.format-failed' THEN
                                             left(coalesce((SELECT string_agg(r.reason, '; ' ORDER BY r.n)
                                                              FROM jsonb_array_elements_text(
                                                                       CASE WHEN jsonb_typeof(e.data->'reasons') = 'array'
                                                                            THEN e.data->'reasons' ELSE '[]' END)
                                                                   WITH ORDINALITY AS r(reason, n)), ''), 1000)
                                         WHEN e.type = 'flows.ts-feedback-received'
                                              AND coalesce(e.data->>'reason', '') <> '' THEN
                                             left(e.data->>'reason', 1000)
                                         ELSE nullif(e.data->>'summary', '')
                                    END AS text
                               FROM events e
                              WHERE e.stream_id = d.stream_id AND e.type LIKE 'flows.%'
                                AND e.type NOT IN ('flows.instance-deleted', 'flows.load-running',
                                                   'flows.load-scheduled')) AS s
                      WHERE s.text IS NOT NULL
                      ORDER BY s.version DESC
                      LIMIT 1)
               ELSE l.summary
           END
      FROM deletion d
     WHERE d.stream_id = 'instance-' || l.instance;
END $$;
