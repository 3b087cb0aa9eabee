-- The lasting record: every ticket event as it was published, the tickets and meetings folded from
-- them (services/records/projection.py), and an audit of personal-data removals.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE ticket_events (
    event_id    text PRIMARY KEY,              -- replays and repeats insert nothing
    ticket_no   text NOT NULL,
    topic       text NOT NULL,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    payload     jsonb NOT NULL                 -- the event's JSON, as published
);
CREATE INDEX ticket_events_by_ticket ON ticket_events (ticket_no, occurred_at);
CREATE INDEX ticket_events_by_recorded ON ticket_events (recorded_at);
CREATE INDEX ticket_events_by_topic ON ticket_events (topic, occurred_at);
CREATE INDEX ticket_events_by_meeting ON ticket_events ((payload->>'meeting_id')) WHERE topic LIKE 'meeting.%';

CREATE TABLE tickets (
    ticket_no        text PRIMARY KEY,
    status           text NOT NULL,
    channel          text NOT NULL,
    title            text NOT NULL DEFAULT '',
    text             text NOT NULL,
    address          text NOT NULL DEFAULT '',
    lng              double precision,
    lat              double precision,
    caller_id        text,                      -- salted hash of the phone: links one resident's tickets
    masked_phone     text,                      -- 138****5678
    urgent           boolean NOT NULL DEFAULT false,
    received_at      timestamptz NOT NULL,
    category         text,
    category_names   text[] NOT NULL DEFAULT '{}',
    confidence       real,
    appeal_type      text,
    grid             text,
    community        text,
    street           text,
    department       text,
    department_name  text,
    co_departments   text[] NOT NULL DEFAULT '{}',
    assigned_via     text,
    explanation      text NOT NULL DEFAULT '',  -- why this department (the routing rule, in words)
    assigned_at      timestamptz,
    respond_by       timestamptz,
    resolve_by       timestamptz,
    accepted_at      timestamptz,
    accepted_on_time boolean,
    resolved_at      timestamptz,
    resolution_note  text NOT NULL DEFAULT '',
    closed_at        timestamptz,
    returns          integer NOT NULL DEFAULT 0,
    reopens          integer NOT NULL DEFAULT 0,
    overdue          boolean NOT NULL DEFAULT false,
    escalated        boolean NOT NULL DEFAULT false,
    meeting_id       text,
    rating           smallint,
    solved           boolean,
    survey_outcome   text,
    events           integer NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL,
    personal_data_removed_at timestamptz,
    left_redis_at    timestamptz,             -- closed long enough: only the record has it now
    -- What full-text search reads: trigrams work for Chinese without a segmenter.
    search           text GENERATED ALWAYS AS (title || ' ' || text || ' ' || address) STORED
);
CREATE INDEX tickets_by_received ON tickets (received_at DESC, ticket_no DESC);
CREATE INDEX tickets_by_status ON tickets (status, received_at DESC);
CREATE INDEX tickets_by_department ON tickets (department, status, received_at DESC);
-- A department's queue: its open tickets, newest first, read in index order a page at a time.
CREATE INDEX tickets_open_by_department ON tickets (department, received_at DESC)
    WHERE status IN ('received', 'review', 'assigned', 'accepted', 'meeting');
CREATE INDEX tickets_by_co_departments ON tickets USING gin (co_departments);
CREATE INDEX tickets_by_category ON tickets (category, received_at DESC);
CREATE INDEX tickets_by_street ON tickets (street, received_at DESC);
CREATE INDEX tickets_by_community ON tickets (community);
CREATE INDEX tickets_by_grid ON tickets (grid);
CREATE INDEX tickets_by_caller ON tickets (caller_id);
CREATE INDEX tickets_by_closed ON tickets (closed_at) WHERE closed_at IS NOT NULL;
CREATE INDEX tickets_still_in_redis ON tickets (closed_at) WHERE status = 'closed' AND left_redis_at IS NULL;
CREATE INDEX tickets_search_trgm ON tickets USING gin (search gin_trgm_ops);

CREATE TABLE meetings (
    meeting_id   text PRIMARY KEY,
    reason       text NOT NULL,
    lead_street  text NOT NULL,
    summoned     text[] NOT NULL DEFAULT '{}',
    tickets      text[] NOT NULL DEFAULT '{}',
    category     text,
    grid         text,
    deadline     timestamptz NOT NULL,
    explanation  text NOT NULL DEFAULT '',
    convened_at  timestamptz NOT NULL,
    checked_in   text[] NOT NULL DEFAULT '{}',
    decided_at   timestamptz,
    decision     text NOT NULL DEFAULT '',
    updated_at   timestamptz NOT NULL
);

-- Who removed whose personal data, when and why (the resident's request, or the retention period).
CREATE TABLE privacy_audit (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    action    text NOT NULL,                    -- 'erase' (on request) or 'retention'
    subject   text,                             -- the caller id (a hash), never the phone
    actor     text NOT NULL,
    tickets   integer NOT NULL,
    detail    jsonb NOT NULL DEFAULT '{}'
);
