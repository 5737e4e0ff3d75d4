-- The event archive: every record of the source topics the contract accepts, and every record of
-- the dead-letter topic (status 'rejected', with its reason). A source record that fails the
-- contract is on the dead-letter topic too (the worker puts it there): it is stored once, from
-- there. Replay reads `raw` with `channel` and `received_at` (the record time the worker used).
--
-- Deduplication: a redelivered record has the same (event_time, kafka_topic, kafka_partition,
-- kafka_offset), the sorting key, so ReplacingMergeTree keeps one copy at merge time; query with
-- FINAL where an exact count matters before merges. A retried insert of the same batch is dropped
-- at once by its insert_deduplication_token (non_replicated_deduplication_window).
CREATE TABLE IF NOT EXISTS events
(
    event_time       DateTime64(3, 'UTC') COMMENT 'event time (the message timestamp, else the record time); rejected: the dead-letter record time',
    received_at      DateTime64(3, 'UTC') COMMENT 'time of the Kafka record read',
    status           Enum8('accepted' = 1, 'rejected' = 2),
    channel          LowCardinality(String) COMMENT 'web, email or store (rejected: of the source topic, if known)',
    type             LowCardinality(String) COMMENT 'identify, track, page, screen, group, alias (rejected: as written, if readable)',
    event            String COMMENT 'track: the event name',
    name             String COMMENT 'page, screen: the name',
    path             String COMMENT 'page: the path',
    message_id       String,
    user_id          String,
    anonymous_id     String,
    group_id         String,
    previous_id      String,
    reason           LowCardinality(String) COMMENT 'rejected: the reason code (invalid_json, missing_identity, ...)',
    detail           String COMMENT 'rejected: what was wrong',
    source_topic     String COMMENT 'rejected: where the message came from',
    source_partition Int32 COMMENT 'rejected: -1 when it came through the HTTP collector',
    source_offset    Int64,
    source_http      String COMMENT 'rejected by the HTTP collector: route[index]',
    kafka_topic      LowCardinality(String),
    kafka_partition  UInt32,
    kafka_offset     UInt64,
    raw              String CODEC(ZSTD(3)) COMMENT 'the record value as received',
    properties       String DEFAULT JSONExtractRaw(raw, 'properties') COMMENT 'JSON',
    traits           String DEFAULT JSONExtractRaw(raw, 'traits') COMMENT 'JSON',
    context          String DEFAULT JSONExtractRaw(raw, 'context') COMMENT 'JSON',
    inserted_at      DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX user_idx user_id TYPE bloom_filter GRANULARITY 4,
    INDEX anonymous_idx anonymous_id TYPE bloom_filter GRANULARITY 4,
    INDEX message_idx message_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (event_time, kafka_topic, kafka_partition, kafka_offset)
SETTINGS non_replicated_deduplication_window = 1000;

-- Records the sink could not read (a trigger, delivery or changelog record it cannot decode),
-- kept with the reason instead of stopping the sink. One row per record.
CREATE TABLE IF NOT EXISTS sink_rejects
(
    kafka_topic     LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset    UInt64,
    written_at      DateTime64(3, 'UTC') COMMENT 'time of the Kafka record',
    key             String,
    value           String CODEC(ZSTD(3)),
    reason          LowCardinality(String),
    detail          String,
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (kafka_topic, kafka_partition, kafka_offset)
SETTINGS non_replicated_deduplication_window = 1000;
