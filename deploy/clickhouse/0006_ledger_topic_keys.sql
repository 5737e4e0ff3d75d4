-- score_ledger and account_changes with kafka_topic in their sorting keys. Since model namespaces
-- (schemas/registry.py), both tables hold the rows of two changelogs for the same period after a
-- promotion (the sink reads the new namespace's changelogs from their beginning); without the
-- topic in the key, an old and a new namespace's row with the same contact (account), instant,
-- partition and offset were one row to ReplacingMergeTree, and a merge kept only one of them.
--
-- ClickHouse cannot put an existing column into a sorting key, so each table is rebuilt: a table
-- of the new layout (<table>_0006), every row copied into it (`inserted_at` kept), the names
-- swapped with EXCHANGE TABLES (atomic: readers and the sink always find the table), rows that
-- arrived in the meantime copied over, the old table dropped. A row an earlier merge had already
-- collapsed into its twin is not in the old table to copy (reading that namespace's changelog again
-- from its beginning would write it again). Each step runs only in the state it belongs to (`-- when:`, see analytics/migrations.py),
-- so the file applied again, after an interruption at any point, finishes the rebuild and never
-- swaps back; two processes swapping at once would, and `-- expect:` then has the file applied
-- again. A copy run twice leaves duplicates, which ReplacingMergeTree removes like any re-read. No
-- materialized view reads or writes these tables (stage_transitions_mv reads triggers).

-- score_ledger: the sorting key (contact_id, at, kafka_topic, kafka_partition, kafka_offset).
-- when: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'score_ledger' AND position(sorting_key, 'kafka_topic') = 0
CREATE TABLE IF NOT EXISTS score_ledger_0006
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
ORDER BY (contact_id, at, kafka_topic, kafka_partition, kafka_offset)
SETTINGS non_replicated_deduplication_window = 1000;

-- when: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'score_ledger' AND position(sorting_key, 'kafka_topic') = 0
INSERT INTO score_ledger_0006 (contact_id, at, kind, cause, engagement, engagement_band, fit, fit_grade, stage, rules, message_ids, merged_into, model_version, kafka_topic, kafka_partition, kafka_offset, written_at, inserted_at)
SELECT contact_id, at, kind, cause, engagement, engagement_band, fit, fit_grade, stage, rules, message_ids, merged_into, model_version, kafka_topic, kafka_partition, kafka_offset, written_at, inserted_at
FROM score_ledger;

-- rows inserted while the copy ran (a sink of the previous release still writing), with a minute
-- of overlap for an insert that was in flight when the copy began
-- when: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'score_ledger' AND position(sorting_key, 'kafka_topic') = 0
INSERT INTO score_ledger_0006 (contact_id, at, kind, cause, engagement, engagement_band, fit, fit_grade, stage, rules, message_ids, merged_into, model_version, kafka_topic, kafka_partition, kafka_offset, written_at, inserted_at)
SELECT contact_id, at, kind, cause, engagement, engagement_band, fit, fit_grade, stage, rules, message_ids, merged_into, model_version, kafka_topic, kafka_partition, kafka_offset, written_at, inserted_at
FROM score_ledger
WHERE inserted_at >= (SELECT max(inserted_at) FROM score_ledger_0006) - toIntervalMinute(1);

-- when: SELECT countIf(name = 'score_ledger' AND position(sorting_key, 'kafka_topic') = 0) = 1 AND countIf(name = 'score_ledger_0006' AND position(sorting_key, 'kafka_topic') > 0) = 1 FROM system.tables WHERE database = currentDatabase()
EXCHANGE TABLES score_ledger AND score_ledger_0006;

-- rows that reached the old table between the last copy and the swap
-- when: SELECT countIf(name = 'score_ledger' AND position(sorting_key, 'kafka_topic') > 0) = 1 AND countIf(name = 'score_ledger_0006' AND position(sorting_key, 'kafka_topic') = 0) = 1 FROM system.tables WHERE database = currentDatabase()
INSERT INTO score_ledger (contact_id, at, kind, cause, engagement, engagement_band, fit, fit_grade, stage, rules, message_ids, merged_into, model_version, kafka_topic, kafka_partition, kafka_offset, written_at, inserted_at)
SELECT contact_id, at, kind, cause, engagement, engagement_band, fit, fit_grade, stage, rules, message_ids, merged_into, model_version, kafka_topic, kafka_partition, kafka_offset, written_at, inserted_at
FROM score_ledger_0006
WHERE inserted_at >= (SELECT max(inserted_at) FROM score_ledger_0006) - toIntervalMinute(1);

-- the old table (or a staging table another process created too late to use)
-- when: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'score_ledger' AND position(sorting_key, 'kafka_topic') > 0
DROP TABLE IF EXISTS score_ledger_0006;

-- expect: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'score_ledger' AND position(sorting_key, 'kafka_topic') > 0

-- account_changes: the sorting key (account_id, at, kafka_topic, kafka_partition, kafka_offset).
-- when: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'account_changes' AND position(sorting_key, 'kafka_topic') = 0
CREATE TABLE IF NOT EXISTS account_changes_0006
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
ORDER BY (account_id, at, kafka_topic, kafka_partition, kafka_offset)
SETTINGS non_replicated_deduplication_window = 1000;

-- when: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'account_changes' AND position(sorting_key, 'kafka_topic') = 0
INSERT INTO account_changes_0006 (account_id, at, stage, engagement, engagement_band, fit, fit_grade, members, engaged_members, customers, roles_engaged, model_version, kafka_topic, kafka_partition, kafka_offset, written_at, inserted_at)
SELECT account_id, at, stage, engagement, engagement_band, fit, fit_grade, members, engaged_members, customers, roles_engaged, model_version, kafka_topic, kafka_partition, kafka_offset, written_at, inserted_at
FROM account_changes;

-- rows inserted while the copy ran (a sink of the previous release still writing), with a minute
-- of overlap for an insert that was in flight when the copy began
-- when: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'account_changes' AND position(sorting_key, 'kafka_topic') = 0
INSERT INTO account_changes_0006 (account_id, at, stage, engagement, engagement_band, fit, fit_grade, members, engaged_members, customers, roles_engaged, model_version, kafka_topic, kafka_partition, kafka_offset, written_at, inserted_at)
SELECT account_id, at, stage, engagement, engagement_band, fit, fit_grade, members, engaged_members, customers, roles_engaged, model_version, kafka_topic, kafka_partition, kafka_offset, written_at, inserted_at
FROM account_changes
WHERE inserted_at >= (SELECT max(inserted_at) FROM account_changes_0006) - toIntervalMinute(1);

-- when: SELECT countIf(name = 'account_changes' AND position(sorting_key, 'kafka_topic') = 0) = 1 AND countIf(name = 'account_changes_0006' AND position(sorting_key, 'kafka_topic') > 0) = 1 FROM system.tables WHERE database = currentDatabase()
EXCHANGE TABLES account_changes AND account_changes_0006;

-- rows that reached the old table between the last copy and the swap
-- when: SELECT countIf(name = 'account_changes' AND position(sorting_key, 'kafka_topic') > 0) = 1 AND countIf(name = 'account_changes_0006' AND position(sorting_key, 'kafka_topic') = 0) = 1 FROM system.tables WHERE database = currentDatabase()
INSERT INTO account_changes (account_id, at, stage, engagement, engagement_band, fit, fit_grade, members, engaged_members, customers, roles_engaged, model_version, kafka_topic, kafka_partition, kafka_offset, written_at, inserted_at)
SELECT account_id, at, stage, engagement, engagement_band, fit, fit_grade, members, engaged_members, customers, roles_engaged, model_version, kafka_topic, kafka_partition, kafka_offset, written_at, inserted_at
FROM account_changes_0006
WHERE inserted_at >= (SELECT max(inserted_at) FROM account_changes_0006) - toIntervalMinute(1);

-- the old table (or a staging table another process created too late to use)
-- when: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'account_changes' AND position(sorting_key, 'kafka_topic') > 0
DROP TABLE IF EXISTS account_changes_0006;

-- expect: SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = 'account_changes' AND position(sorting_key, 'kafka_topic') > 0
