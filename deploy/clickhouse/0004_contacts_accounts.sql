-- Fed from the contacts table changelog (one record per contact per worker batch that changed it).
--
-- score_ledger: one row per changelog record that changed the contact's engagement (beyond decay),
-- fit or stage, or merged or deleted it: the scores as of the contact's newest event (`at`), with
-- the rules and message ids of the scored events that arrived since its previous row. Scores at
-- another instant: engagement decays with the model's half-life from `at`. As-of queries:
-- argMax(..., (at, kafka_offset)) over at <= t.
CREATE TABLE IF NOT EXISTS score_ledger
(
    contact_id      String,
    at              DateTime64(3, 'UTC') COMMENT 'the contact''s newest event time (deleted: the record time)',
    kind            Enum8('score' = 1, 'merged' = 2, 'deleted' = 3),
    cause           LowCardinality(String) COMMENT 'first, events, other (late events, merges), fit, stage, merged, deleted',
    engagement      Float64 COMMENT 'at `at`',
    engagement_band LowCardinality(String),
    fit             Float64,
    fit_grade       LowCardinality(String),
    stage           LowCardinality(String),
    rules           Array(LowCardinality(String)) COMMENT 'rules matched by the events in message_ids',
    message_ids     Array(String) COMMENT 'the scored events since the previous row (newest 16)',
    merged_into     String,
    model_version   LowCardinality(String) COMMENT 'the model that last computed the state',
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    written_at      DateTime64(3, 'UTC') COMMENT 'time of the changelog record',
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (contact_id, at, kafka_partition, kafka_offset)
SETTINGS non_replicated_deduplication_window = 1000;

-- contacts: the latest changelog record of each contact, summarised (the CRM sync list sorted by
-- last change, persona x stage, RFM, forecast). The changelog offset is the version: per contact
-- it only grows. Query with FINAL (and status = 'active').
CREATE TABLE IF NOT EXISTS contacts
(
    contact_id      String,
    updated_at      DateTime64(3, 'UTC') COMMENT 'when the change was written (changelog record time): sync by it',
    status          Enum8('active' = 1, 'merged' = 2, 'deleted' = 3),
    merged_into     String,
    user_id         String,
    email           String,
    account_id      String,
    first_seen      Nullable(DateTime64(3, 'UTC')),
    last_seen       Nullable(DateTime64(3, 'UTC')),
    stage           LowCardinality(String),
    stage_since     Nullable(DateTime64(3, 'UTC')),
    persona         LowCardinality(String),
    flags           Array(LowCardinality(String)),
    engagement      Float64 COMMENT 'at last_seen',
    engagement_band LowCardinality(String),
    fit             Float64,
    fit_grade       LowCardinality(String),
    rfm_segment     LowCardinality(String),
    orders          UInt32 COMMENT 'orders with a net value above 0',
    revenue         Float64 COMMENT 'their net value, base currency',
    first_order_at  Nullable(DateTime64(3, 'UTC')),
    last_order_at   Nullable(DateTime64(3, 'UTC')),
    model_version   LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64
)
ENGINE = ReplacingMergeTree(kafka_offset)
ORDER BY contact_id
SETTINGS non_replicated_deduplication_window = 1000;

-- account_changes: one row per accounts changelog record (the worker writes one only when the
-- account changed), scores as of `at`, the event time of the latest member report.
CREATE TABLE IF NOT EXISTS account_changes
(
    account_id      String,
    at              DateTime64(3, 'UTC'),
    stage           LowCardinality(String),
    engagement      Float64 COMMENT 'at `at`',
    engagement_band LowCardinality(String),
    fit             Float64,
    fit_grade       LowCardinality(String),
    members         UInt32,
    engaged_members UInt32,
    customers       UInt32,
    roles_engaged   Array(LowCardinality(String)),
    model_version   LowCardinality(String),
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    written_at      DateTime64(3, 'UTC'),
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (account_id, at, kafka_partition, kafka_offset)
SETTINGS non_replicated_deduplication_window = 1000;
