-- contacts.inserted_at: when the row reached the archive (the server's clock at insert). The CRM
-- sync list (GET /v1/contacts) pages in this order, not by updated_at: the sink may insert a change
-- late (batching, a ClickHouse outage), and a cursor over the change time would step over a change
-- that arrives after the reader passed its time; arrival order never puts a new row behind a
-- cursor. Rows already there get the time of this migration (applied again, it moves rows later,
-- never earlier: a reader may see a contact twice, never miss one).
ALTER TABLE contacts ADD COLUMN IF NOT EXISTS inserted_at DateTime64(3, 'UTC') DEFAULT now64(3);
ALTER TABLE contacts MATERIALIZE COLUMN inserted_at SETTINGS mutations_sync = 2;
