-- Source data ("Fonti dati") as published by the CUP, one row per source record, keyed by source_id.
-- Owned by services/loader. This is NOT the event store: a source record is replaced in place by a
-- correction (revision + 1); snapshots copy rows, so a correction never changes a snapshot taken before.
-- content_hash = sha256 of the record's content (computed at intake), to tell duplicates from corrections.
-- Column names are the field names of contracts.sources models, one column per field.

CREATE TABLE source_service (
    source_id                text          PRIMARY KEY,
    schema_version           smallint      NOT NULL,
    ente                     text          NOT NULL,
    region                   text          NOT NULL,
    structure_sts11          text          NOT NULL,
    structure_type           text          NOT NULL,
    patient_cf               text,
    patient_surname          text          NOT NULL,
    patient_name             text          NOT NULL,
    patient_sex              text          NOT NULL,
    patient_birth_date       date          NOT NULL,
    patient_residence_istat  text          NOT NULL,
    patient_residence_asl    text,
    patient_objection        boolean       NOT NULL,
    prescription_id          text          NOT NULL,
    prescription_number      text          NOT NULL,
    prescription_date        date,
    prescriber_code          text,
    priority                 text,
    exemption_code           text,
    delivery_type            text          NOT NULL,
    access_type              text,
    catalogue_code           text          NOT NULL,
    catalogue_coding         text          NOT NULL,
    quantity                 integer       NOT NULL,
    delivery_date            date          NOT NULL,
    booking_date             date,
    first_offered_date       date,
    discipline               text,
    tariff                   numeric(9,2)  NOT NULL,
    ticket                   numeric(9,2)  NOT NULL,
    pacc                     boolean       NOT NULL,
    pacc_start_date          date,
    regime                   text          NOT NULL,
    revision                 integer       NOT NULL DEFAULT 1,
    content_hash             bytea         NOT NULL,
    received_at              timestamptz   NOT NULL DEFAULT now()
);
-- a load selects the prescriptions with a service in the period, then all the rows of those prescriptions
CREATE INDEX source_service_period ON source_service (ente, delivery_date);
CREATE INDEX source_service_prescription ON source_service (ente, prescription_id);

CREATE TABLE source_payment_document (
    source_id          text          PRIMARY KEY,
    schema_version     smallint      NOT NULL,
    ente               text          NOT NULL,
    structure_sts11    text          NOT NULL,
    issuer_vat         text          NOT NULL,
    issue_date         date          NOT NULL,
    device             integer       NOT NULL,
    document_number    text          NOT NULL,
    payment_date       date          NOT NULL,
    traced_payment     boolean       NOT NULL,
    document_kind      text          NOT NULL,
    patient_cf         text,
    patient_objection  boolean       NOT NULL,
    items              jsonb         NOT NULL,  -- list of SpendingItem (spending_type, flag_spending_type, amount, service_source_ids)
    revision           integer       NOT NULL DEFAULT 1,
    content_hash       bytea         NOT NULL,
    received_at        timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX source_payment_document_period ON source_payment_document (ente, payment_date);

CREATE TABLE source_intramoenia_booking (
    source_id          text          PRIMARY KEY,
    schema_version     smallint      NOT NULL,
    ente               text          NOT NULL,
    structure_sts11    text          NOT NULL,
    catalogue_code     text          NOT NULL,
    booking_date       date          NOT NULL,
    appointment_date   date          NOT NULL,
    priority           text,
    patient_cf         text,
    index_week         boolean       NOT NULL,
    revision           integer       NOT NULL DEFAULT 1,
    content_hash       bytea         NOT NULL,
    received_at        timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX source_intramoenia_booking_period ON source_intramoenia_booking (ente, booking_date);

-- Reference data loaded from contracts/data (versioned files), by services/loader/catalogue.py.
CREATE TABLE catalogue_item (
    version      text          NOT NULL,  -- layout / catalogue year, e.g. '2020'
    coding       text          NOT NULL,  -- 'N' national, lower-case letter = regional catalogue
    code         text          NOT NULL,  -- with dots, e.g. '87.37.1'
    description  text          NOT NULL,
    tariff       numeric(9,2)  NOT NULL,
    PRIMARY KEY (version, coding, code)
);

CREATE TABLE ente_structure (
    ente            text  NOT NULL,
    sts11           text  NOT NULL,
    name            text  NOT NULL,
    structure_type  text  NOT NULL,  -- 1 public, 2 private accredited
    PRIMARY KEY (ente, sts11)
);
