-- A snapshot whose checks are done, recorded with it, so that any loader process (a restarted one, another
-- replica) can finish its load without a new snapshot or new checks (services/loader/pipeline.py):
--   checked_counts    the outcome's counts (services, prescriptions, patients / bookings / documents),
--   checked_problems  how many rows the checks left in load_problem. That table is UNLOGGED: PostgreSQL
--                     empties it after a crash, so a loader resumes only while exactly that many are there
--                     (otherwise it takes the load again from a new snapshot).
-- A run that died before its checks were done left a snapshot nobody will use: the loader drops the instance's
-- other snapshots (rows and problems) before it takes a new one.
ALTER TABLE source_snapshot ADD COLUMN checked_counts jsonb, ADD COLUMN checked_problems bigint;
CREATE INDEX source_snapshot_instance ON source_snapshot (instance);
