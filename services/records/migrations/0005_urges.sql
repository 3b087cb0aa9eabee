-- 催办: how often a resident called again about a ticket while it was open (the `urged` action of
-- `ticket.updated`), on its row for the lists and reports. Rows folded before it count none until
-- they are folded again (`appeals records rebuild`).
ALTER TABLE tickets ADD COLUMN urges integer NOT NULL DEFAULT 0;
