-- `recorded_at` is read by range only: the events a records worker that stopped without writing
-- the rows it held back had stored meanwhile (`Records.recover_held`). It grows with the inserts,
-- so a BRIN index finds that range from a summary of each 128 pages, where the B-tree took an entry
-- (and a WAL record) for every event, about four an appeal. `autosummarize`: each range is
-- summarised as it fills, not only by a VACUUM (unsummarised ranges are read, never missed).
DROP INDEX ticket_events_by_recorded;
CREATE INDEX ticket_events_by_recorded ON ticket_events USING brin (recorded_at) WITH (autosummarize = on);
