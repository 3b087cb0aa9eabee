-- A records worker may hold back the row of a ticket that waits for its assignment (its events are
-- stored at once; the row is written with the assignment's, once instead of three times in a flood).
-- What it holds is in its memory only, so each worker keeps here the time of the oldest event whose
-- row it holds (`since`, NULL when none) and when it last wrote (`seen_at`). A worker that stopped
-- writing with rows held back (it crashed) leaves its row: another worker, or itself started again,
-- folds the tickets of the events recorded from `since` to `seen_at` and deletes it.
CREATE TABLE records_held (
    instance text PRIMARY KEY,
    since    timestamptz,
    seen_at  timestamptz NOT NULL DEFAULT now()
);
