-- Source snapshots ("istanze fonte"): the rows a load took, frozen. Owned by services/loader; read by
-- the formatter. A snapshot is written once, by ONE INSERT ... SELECT (consistent under MVCC while
-- intake goes on), and never updated.

-- Instance numbers and source-snapshot numbers come from one sequence (seed: flow 1947 -> source 1948).
CREATE SEQUENCE flow_instance_seq START 1947;

-- One row per snapshot: what was taken, for which instance, entity and period.
CREATE TABLE source_snapshot (
    snapshot_id   bigint       PRIMARY KEY,       -- the "istanza fonte" number
    instance      bigint       NOT NULL,          -- the "istanza flusso" it was taken for
    flow_type     text         NOT NULL,          -- FLUSSO_C, FLUSSO_C_PACC, FLUSSO_MEF, FLUSSO_ALPI_TA, FLUSSO_730
    version       text         NOT NULL,          -- layout / catalogue version, e.g. '2020'
    ente          text         NOT NULL,
    period_start  date         NOT NULL,
    period_end    date         NOT NULL,
    source_table  text         NOT NULL,          -- snapshot_service | snapshot_payment_document | snapshot_booking
    rows          bigint       NOT NULL,
    taken_at      timestamptz  NOT NULL DEFAULT now()
);

-- Services of FLUSSO_C / FLUSSO_C_PACC / FLUSSO_MEF snapshots.
-- Columns: the DeliveredService fields (same names and types as source_service) plus
--   snapshot_id  the snapshot,
--   row_number   01..n within the prescription, ordered by delivery_date, source_id (the C1/C2 row
--                number; row 99 is NOT stored: the formatter derives it from the prescription's rows),
--   revision     the source revision that was copied.
-- A prescription is in the snapshot of the period of its LAST service, with ALL its services (also
-- those delivered in the previous period). Rows > 98 exist only in failed loads (TOO_MANY_SERVICES).
CREATE TABLE snapshot_service (
    snapshot_id              bigint        NOT NULL,
    row_number               smallint      NOT NULL,
    source_id                text          NOT NULL,
    revision                 integer       NOT NULL,
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
    regime                   text          NOT NULL
);
CREATE INDEX snapshot_service_prescription ON snapshot_service (snapshot_id, prescription_id, row_number);

-- Payment documents of FLUSSO_730 snapshots (period = payment_date); columns as source_payment_document.
CREATE TABLE snapshot_payment_document (
    snapshot_id        bigint    NOT NULL,
    source_id          text      NOT NULL,
    revision           integer   NOT NULL,
    schema_version     smallint  NOT NULL,
    ente               text      NOT NULL,
    structure_sts11    text      NOT NULL,
    issuer_vat         text      NOT NULL,
    issue_date         date      NOT NULL,
    device             integer   NOT NULL,
    document_number    text      NOT NULL,
    payment_date       date      NOT NULL,
    traced_payment     boolean   NOT NULL,
    document_kind      text      NOT NULL,
    patient_cf         text,
    patient_objection  boolean   NOT NULL,
    items              jsonb     NOT NULL,
    PRIMARY KEY (snapshot_id, source_id)
);

-- Intramoenia bookings of FLUSSO_ALPI_TA snapshots (period = booking_date); columns as source_intramoenia_booking.
CREATE TABLE snapshot_booking (
    snapshot_id        bigint    NOT NULL,
    source_id          text      NOT NULL,
    revision           integer   NOT NULL,
    schema_version     smallint  NOT NULL,
    ente               text      NOT NULL,
    structure_sts11    text      NOT NULL,
    catalogue_code     text      NOT NULL,
    booking_date       date      NOT NULL,
    appointment_date   date      NOT NULL,
    priority           text,
    patient_cf         text,
    index_week         boolean   NOT NULL,
    PRIMARY KEY (snapshot_id, source_id)
);

-- Problems found by the checks of one load, until the feedback file is written (then deleted).
-- UNLOGGED: they are rebuilt from the snapshot if lost; the feedback file is the durable record.
CREATE UNLOGGED TABLE load_problem (
    snapshot_id  bigint  NOT NULL,
    record_key   text    NOT NULL,  -- '<source_id>@<prescription_id>/<row>' or '<source_id>'
    field        text    NOT NULL,
    code         text    NOT NULL,
    severity     text    NOT NULL,  -- 'error' blocks the load, 'warning' does not
    message      text    NOT NULL
);
CREATE INDEX load_problem_snapshot ON load_problem (snapshot_id);
