-- Each decision carries the id its gateway gave it, so a batch resent after a crash or a lost answer is stored once
-- (ingest inserts with ON CONFLICT DO NOTHING). Rows from before, or from gateways that send none, keep NULL, which a
-- unique index never counts as a duplicate.
ALTER TABLE decisions ADD COLUMN record_id TEXT;
CREATE UNIQUE INDEX decisions_by_record ON decisions (record_id);
