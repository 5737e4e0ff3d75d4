-- The triggers topic (contract: schemas/triggers.py), one row per trigger id: the same change
-- computed again (redelivery, replay) has the same id, subject and time, hence the same sorting
-- key, and ReplacingMergeTree keeps one.
CREATE TABLE IF NOT EXISTS triggers
(
    id              String,
    type            LowCardinality(String),
    at              DateTime64(3, 'UTC') COMMENT 'when the change happened (event time)',
    subject         String COMMENT 'the contact id, or the account id of account triggers',
    contact_id      String,
    account_id      String,
    before          String COMMENT 'JSON',
    after           String COMMENT 'JSON',
    rule            String,
    cause           String COMMENT 'message id of the event that caused it; empty when time did',
    model_version   LowCardinality(String),
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    written_at      DateTime64(3, 'UTC') COMMENT 'time of the Kafka record',
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (subject, at, id)
SETTINGS non_replicated_deduplication_window = 1000;

-- Contact and account stage changes, fed from `triggers` by the view below (the funnel, time in
-- stage and conversion reports read it). `contact.disqualified` is not a separate transition: the
-- core emits it beside the `stage.changed` into the disqualified stage, which is here.
CREATE TABLE IF NOT EXISTS stage_transitions
(
    subject_kind  Enum8('contact' = 1, 'account' = 2),
    subject_id    String,
    at            DateTime64(3, 'UTC'),
    from_stage    LowCardinality(String),
    to_stage      LowCardinality(String),
    rule          String,
    cause         String,
    model_version LowCardinality(String),
    trigger_id    String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (subject_kind, subject_id, at, trigger_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS stage_transitions_mv TO stage_transitions AS
SELECT
    if(type = 'account.stage_changed', 'account', 'contact') AS subject_kind,
    subject AS subject_id,
    at,
    JSONExtractString(before) AS from_stage,
    JSONExtractString(after) AS to_stage,
    rule,
    cause,
    model_version,
    id AS trigger_id
FROM triggers
WHERE type IN ('stage.changed', 'account.stage_changed');
