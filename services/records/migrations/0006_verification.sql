-- 现场核查: the grid worker's check on the spot of a ticket's last resolution (the `verified`
-- action of `ticket.updated`): when, by whom (the worker's id), the outcome ('solved' or
-- 'not_solved', which sent the ticket back to its department), what the worker saw and the photos
-- taken there. A new resolution clears them (each is checked once), as the ticket in Redis does.
-- Rows folded before it have none until they are folded again (`appeals records rebuild`).
ALTER TABLE tickets ADD COLUMN verified_at timestamptz;
ALTER TABLE tickets ADD COLUMN verified_by text;
ALTER TABLE tickets ADD COLUMN verification text;
ALTER TABLE tickets ADD COLUMN verification_note text NOT NULL DEFAULT '';
ALTER TABLE tickets ADD COLUMN verification_photos text[] NOT NULL DEFAULT '{}';
