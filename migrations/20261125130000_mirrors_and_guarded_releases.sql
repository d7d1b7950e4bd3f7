-- Issue 8: mirrored traffic in the audit, and guarded (CanaryRelease) releases in the release history.

-- The request id of the client request a mirrored copy duplicates; NULL for client traffic. ADD COLUMN with no
-- default leaves existing rows untouched, so the migration is instant on a large table.
ALTER TABLE decisions ADD COLUMN mirror_of TEXT;
-- Mirrored copies are a small share of the rows: partial indexes keep `mirrored=only` pages a range scan in
-- (received_at_ms, id) order and "the copies of this request" a lookup, for the cost of the mirrored rows only.
-- `mirrored=exclude` needs no index: nearly every row passes its predicate.
CREATE INDEX decisions_mirrored ON decisions (received_at_ms) WHERE mirror_of IS NOT NULL;
CREATE INDEX decisions_by_mirror_of ON decisions (mirror_of) WHERE mirror_of IS NOT NULL;

-- The CanaryRelease a history row belongs to (operator actions and controller steps); NULL for manual weight edits.
ALTER TABLE releases ADD COLUMN guarded_release TEXT;
-- Controller events are copied from the release's status.history each time the dashboard reads it; this key (the
-- release and the event's time, percents, phase, actor and reason) makes the copy idempotent. NULL for rows the
-- dashboard itself records.
ALTER TABLE releases ADD COLUMN event_key TEXT;
CREATE UNIQUE INDEX releases_by_event_key ON releases (event_key);
