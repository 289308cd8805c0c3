-- The onboarding dashboard keeps a refused switch as data, as the onboarding.switch-refused event has it:
-- switch_refused_reasons (the reasons, a JSON list), proposed_date and proposed_window (the earliest valid
-- slot, 'HH:MM-HH:MM' as switch_window). The projection used to write them into switch_note as one Italian
-- note ('...; prima data valida 21/09/2026 08:30-10:30'); the console and the CLI write the words now, and
-- switch_note is only a scheduled switch's own warning (services/onboarding/projection.py).
--
-- The projection's DDL is 0040 followed by this file (a rebuild creates the same columns), so this file runs
-- again on every start-up and in every rebuild: the move below only touches rows still in the old shape (a
-- refusal's note: switch_note set while switch_date is NULL, which only a refusal written before this file
-- leaves), and a new or rebuilt table has none. Those rows take the values of their request's last refusal,
-- so that `flows replay --verify` finds the live table equal to the one rebuilt from the log. The columns are
-- added only where missing: an ALTER TABLE would lock the dashboard against its readers at every start-up.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'onboarding_dashboard'::regclass
                                                AND attname = 'proposed_window' AND NOT attisdropped) THEN
        ALTER TABLE onboarding_dashboard
            ADD COLUMN IF NOT EXISTS switch_refused_reasons jsonb,
            ADD COLUMN IF NOT EXISTS proposed_date date,
            ADD COLUMN IF NOT EXISTS proposed_window text;
    END IF;
    IF EXISTS (SELECT 1 FROM onboarding_dashboard WHERE switch_note IS NOT NULL AND switch_date IS NULL) THEN
        UPDATE onboarding_dashboard d
           SET switch_note = NULL,
               switch_refused_reasons = r.data->'reasons',
               proposed_date = (r.data->>'proposed_date')::date,
               proposed_window = (r.data->>'proposed_window_start') || '-' || (r.data->>'proposed_window_end')
          FROM events r
         WHERE d.switch_note IS NOT NULL AND d.switch_date IS NULL
           AND r.stream_id = 'onboarding-' || d.request_id AND r.type = 'onboarding.switch-refused'
           AND r.version = (SELECT max(x.version) FROM events x
                             WHERE x.stream_id = r.stream_id AND x.type = 'onboarding.switch-refused');
    END IF;
END $$;
