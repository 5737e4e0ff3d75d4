-- The webhook deliveries topic (contract: schemas/webhooks.py DeliveryRecord): the latest state of
-- each delivery. Every attempt rewrites the record; ReplacingMergeTree keeps the row with the
-- greatest updated_at per (subscription_id, id). Query with FINAL.
CREATE TABLE IF NOT EXISTS webhook_deliveries
(
    id                 String,
    subscription_id    String,
    type               LowCardinality(String),
    key                String COMMENT 'the trigger''s contact or account id',
    trigger_id         String COMMENT 'empty for a test send',
    status             LowCardinality(String) COMMENT 'pending, succeeded or failed',
    created_at         DateTime64(3, 'UTC'),
    updated_at         DateTime64(3, 'UTC'),
    attempt_count      UInt32,
    scheduled_attempts UInt32,
    next_attempt_at    Nullable(DateTime64(3, 'UTC')),
    reason             String,
    attempts           String COMMENT 'JSON array of the latest attempts (at_ms, outcome, latency_ms, status_code, error, ...)',
    body               String CODEC(ZSTD(3)) COMMENT 'the exact payload sent',
    source_partition   UInt32 COMMENT 'the trigger (or command) partition',
    seq                UInt64 COMMENT 'the trigger (or command) offset',
    kafka_topic        LowCardinality(String),
    kafka_partition    UInt32,
    kafka_offset       UInt64,
    inserted_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (subscription_id, id)
SETTINGS non_replicated_deduplication_window = 1000;
