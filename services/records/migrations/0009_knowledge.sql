-- The hotline's knowledge base (知识库), kept in the system: the city's knowledge.yaml seeds it (an
-- id not here yet is inserted at the API's start; a row here, edited or retired, is never replaced
-- from the file), the owning departments keep their answers current and the dispatch desk manages
-- it. A retired entry (停用) stays, so its id is not seeded again and its history is kept.
CREATE TABLE knowledge (
    id             text PRIMARY KEY,
    question       text NOT NULL,
    answer         text NOT NULL,
    category       text,
    keywords       text[] NOT NULL DEFAULT '{}',
    department     text,
    reviewed       date,                          -- when the owning department last confirmed it
    updated_at     timestamptz NOT NULL DEFAULT now(),
    updated_by     text NOT NULL,                 -- the token's scope (role:who), or 'city' for the seed
    retired_at     timestamptz,
    retired_reason text
);
CREATE INDEX knowledge_department ON knowledge (department) WHERE retired_at IS NULL;

-- Every change of an entry: who, when, what (the entry as it was after the change).
CREATE TABLE knowledge_revisions (
    id        bigserial PRIMARY KEY,
    entry_id  text NOT NULL REFERENCES knowledge (id),
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,
    action    text NOT NULL CHECK (action IN ('created', 'edited', 'confirmed', 'retired')),
    entry     jsonb NOT NULL,
    note      text NOT NULL DEFAULT ''            -- a retirement's reason
);
CREATE INDEX knowledge_revisions_entry ON knowledge_revisions (entry_id, at DESC, id DESC);
