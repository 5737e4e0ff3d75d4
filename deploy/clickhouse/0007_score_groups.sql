-- Score groups (the model file's engagement.groups): each contact's group scores beside its overall
-- engagement, so the CRM sync list (GET /v1/contacts?group=) and the reports can filter and sort by a
-- group. A value is the group's raw score (its rules' earned points decayed at the group's half-life,
-- before the group's `max` clamps it) as of the row's instant (contacts: last_seen; score_ledger: at);
-- readers decay it with the group's half-life, then clamp it, as the core does. A group the model
-- does not declare, or a row written before this migration, has no entry (score 0).
ALTER TABLE contacts ADD COLUMN IF NOT EXISTS groups Map(LowCardinality(String), Float64) COMMENT 'raw group scores at last_seen';
ALTER TABLE score_ledger ADD COLUMN IF NOT EXISTS groups Map(LowCardinality(String), Float64) COMMENT 'raw group scores at `at`';
