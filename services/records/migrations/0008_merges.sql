-- 并案: a duplicate (从件) the dispatch desk merged into the ticket already being handled (主件) is
-- closed with `merged_into`, the main ticket's number (the `merge` of its `merged` ticket.updated);
-- the main ticket lists its duplicates in `merged`, in the order they were merged (its
-- `duplicate_merged` events). Rows folded before it have neither until they are folded again
-- (`appeals records rebuild`).
ALTER TABLE tickets ADD COLUMN merged_into text;
ALTER TABLE tickets ADD COLUMN merged text[] NOT NULL DEFAULT '{}';
