-- 我上报的: who registered each ticket (`operator_id` of its appeal: a hotline operator's or a grid
-- worker's 工号; a staff id, not a resident's data, so an erasure keeps it), for a grid worker's list
-- of its own reports, which follows them wherever the desk places them and after they close.
ALTER TABLE tickets ADD COLUMN operator_id text;
-- The list: one worker's reports, newest first, a page at a time in index order.
CREATE INDEX tickets_by_operator ON tickets (operator_id, received_at DESC, ticket_no DESC)
    WHERE operator_id IS NOT NULL;
-- Rows folded before have no operator until they are folded again (`appeals records rebuild`). The
-- patrol reports, which the list reads, are filled here from their stored appeal (or the appeal a
-- classification carries), so that a worker's list is whole on the first start: a seq scan of
-- `tickets` and an index read of each report's first events, not a rebuild of every ticket.
UPDATE tickets t SET operator_id = (
    SELECT coalesce(e.payload->>'operator_id', e.payload->'appeal'->>'operator_id')
      FROM ticket_events e
     WHERE e.ticket_no = t.ticket_no
       AND e.topic IN ('appeal.received', 'appeal.classified', 'appeal.review')
       AND coalesce(e.payload->>'operator_id', e.payload->'appeal'->>'operator_id') IS NOT NULL
     ORDER BY e.occurred_at LIMIT 1)
 WHERE t.channel = 'patrol' AND t.operator_id IS NULL;
