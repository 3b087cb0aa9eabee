-- Photos (shared.photos): the ids a ticket's appeal and its resolution carry, on its row for the
-- pages, and one row per photo and ticket, which the erasure and the retention read to delete the
-- files and the sweep of unattached uploads reads to keep what a ticket took.
ALTER TABLE tickets ADD COLUMN photos text[] NOT NULL DEFAULT '{}';
ALTER TABLE tickets ADD COLUMN resolution_photos text[] NOT NULL DEFAULT '{}';
CREATE TABLE ticket_photos (
    ticket_no text NOT NULL,
    photo_id text NOT NULL,
    event_id text NOT NULL,
    PRIMARY KEY (ticket_no, photo_id)
);
CREATE INDEX ticket_photos_by_photo ON ticket_photos (photo_id);
