-- A joint meeting decided long ago leaves Redis as its tickets do (services/records/retention.py),
-- and is then read from here in the shape Redis held it: who checked in and when (`checkins`,
-- department -> time), the lead decided on and who decided (the decision's fact). Rows folded
-- before have neither until they are folded again: retention folds a meeting again before it lets
-- it go, `appeals records rebuild` folds them all.
ALTER TABLE meetings ADD COLUMN checkins jsonb NOT NULL DEFAULT '{}';
ALTER TABLE meetings ADD COLUMN lead text;
ALTER TABLE meetings ADD COLUMN decided_by text;
ALTER TABLE meetings ADD COLUMN left_redis_at timestamptz;  -- only the record has it now
CREATE INDEX meetings_still_in_redis ON meetings (decided_at, meeting_id)
    WHERE decided_at IS NOT NULL AND left_redis_at IS NULL;
