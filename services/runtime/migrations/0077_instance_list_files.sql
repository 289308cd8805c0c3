-- The instance read model says whether an instance has an esito (has_esiti: a file of kind 'feedback' or
-- 'ts-errors', services/runtime/esiti.py) and whether it has any other file (has_files): what the console's list of
-- instances offers to download on each row, read with the row instead of a look-up of instance_files per row.
--
-- The projection's DDL (services/runtime/read_models.py) has the columns for new databases; this adds them to an
-- existing table and fills them from the files each instance already has, which are the files its events named
-- (instance_files is the same projection's), so that `flows replay --verify` finds the live table equal to the one
-- rebuilt from the log.
ALTER TABLE IF EXISTS instance_list
    ADD COLUMN IF NOT EXISTS has_esiti boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS has_files boolean NOT NULL DEFAULT false;
DO $$
BEGIN
    IF to_regclass('instance_list') IS NULL OR to_regclass('instance_files') IS NULL THEN
        RETURN;
    END IF;
    UPDATE instance_list l
       SET has_esiti = f.esiti, has_files = f.others
      FROM (SELECT instance, bool_or(kind IN ('feedback', 'ts-errors')) AS esiti,
                   bool_or(kind NOT IN ('feedback', 'ts-errors')) AS others
              FROM instance_files GROUP BY instance) f
     WHERE f.instance = l.instance;
END $$;
