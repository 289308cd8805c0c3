-- A refused new switch slot does not cancel a switch already scheduled: the request's history keeps it
-- (services/onboarding/domain.py: a refusal leaves `switch` as it was), and the dashboard now does too
-- (services/onboarding/projection.py: the row keeps its date, window, warning and status `switch-scheduled`, the
-- refusal beside it). Before, the dashboard dropped the scheduled switch on any refusal, so the dashboard said
-- "switch rifiutato" with no date while the request's page showed the switch still scheduled.
--
-- Rows written that way: status 'switch-refused' although their request has a scheduled switch (its last
-- onboarding.switch-scheduled event; a refusal is the last switch event of these rows, so that switch is the one
-- still scheduled). They take that switch back, as the projection now writes them, so that `flows replay --verify`
-- finds the live table equal to the one rebuilt from the log. The refusal's columns stay (0073 moved them).
UPDATE onboarding_dashboard d
   SET status = 'switch-scheduled',
       switch_date = (s.data->>'switch_date')::date,
       switch_window = (s.data->>'window_start') || '-' || (s.data->>'window_end'),
       switch_note = s.data->>'warning'
  FROM events s
 WHERE d.status = 'switch-refused' AND d.switch_date IS NULL
   AND s.stream_id = 'onboarding-' || d.request_id AND s.type = 'onboarding.switch-scheduled'
   AND s.version = (SELECT max(x.version) FROM events x
                     WHERE x.stream_id = s.stream_id AND x.type = 'onboarding.switch-scheduled');
