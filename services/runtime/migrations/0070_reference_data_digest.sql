-- What services/loader/catalogue.py last copied into catalogue_item / ente_structure, per catalogue version:
-- the sha256 of the data files' rows. A load whose files have the same digest skips the delete + copy
-- (a small load spent a quarter of its time re-copying unchanged reference data).
CREATE TABLE reference_data_digest (
    version   text        PRIMARY KEY,
    digest    bytea       NOT NULL,
    synced_at timestamptz NOT NULL DEFAULT now()
);
