-- The text that full-text search reads lives in a table of its own. A ticket's row is rewritten at
-- every step of its life, and a row rewritten with any indexed column changed gets new entries in
-- every index, the trigram index too: that index took about 45% of PostgreSQL's CPU per appeal.
-- Title, text and address change twice in a ticket's life (received; personal data removed), so
-- `ticket_search` is written then, by trigger, and whatever writes `tickets` keeps it right.

CREATE TABLE ticket_search (
    ticket_no text PRIMARY KEY,
    search    text
);

INSERT INTO ticket_search (ticket_no, search) SELECT ticket_no, search FROM tickets;

DROP INDEX tickets_search_trgm;
ALTER TABLE tickets DROP COLUMN search;
CREATE INDEX ticket_search_trgm ON ticket_search USING gin (search gin_trgm_ops);

CREATE FUNCTION ticket_search_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ticket_search (ticket_no, search)
    VALUES (NEW.ticket_no, NEW.title || ' ' || NEW.text || ' ' || NEW.address)
    ON CONFLICT (ticket_no) DO UPDATE SET search = EXCLUDED.search;
    RETURN NULL;
END
$$;

CREATE FUNCTION ticket_search_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM ticket_search WHERE ticket_no = OLD.ticket_no;
    RETURN NULL;
END
$$;

CREATE FUNCTION ticket_search_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE ticket_search;
    RETURN NULL;
END
$$;

CREATE TRIGGER tickets_search_on_insert AFTER INSERT ON tickets
    FOR EACH ROW EXECUTE FUNCTION ticket_search_write();
CREATE TRIGGER tickets_search_on_update AFTER UPDATE ON tickets
    FOR EACH ROW
    WHEN (OLD.title IS DISTINCT FROM NEW.title
          OR OLD.text IS DISTINCT FROM NEW.text
          OR OLD.address IS DISTINCT FROM NEW.address)
    EXECUTE FUNCTION ticket_search_write();
CREATE TRIGGER tickets_search_on_delete AFTER DELETE ON tickets
    FOR EACH ROW EXECUTE FUNCTION ticket_search_delete();
CREATE TRIGGER tickets_search_on_truncate AFTER TRUNCATE ON tickets
    FOR EACH STATEMENT EXECUTE FUNCTION ticket_search_truncate();
