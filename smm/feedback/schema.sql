-- The two tables `python run.py stage=feedback` reads from the Social Scheduler's database
-- (PostgreSQL 12 or newer). Table and column names are the defaults of feedback.tables and
-- feedback.columns; an app whose tables are named differently maps them there, no code change.
-- The stage only reads (in a read-only transaction); it never writes to these tables.
--
-- Load it into an empty database with:  psql "$DATABASE_URL" -f smm/feedback/schema.sql

-- One row per answer the app's model produced.
CREATE TABLE IF NOT EXISTS generations (
    id            BIGSERIAL   PRIMARY KEY,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    task          TEXT        NOT NULL,  -- a task of smm/tasks.py: post_generation, hashtags, ab_variations, sentiment, posting_times, brand_voice
    language      TEXT        NOT NULL,  -- de | en | fr | es | pt (a region suffix such as de-DE is accepted)
    platform      TEXT,                  -- facebook | linkedin | instagram | x | threads; NULL only where the task publishes nothing (hashtags, posting_times)
    system_prompt TEXT,                  -- the system prompt sent; NULL = the task's prompt from smm/tasks.py
    user_input    TEXT        NOT NULL,  -- the user message sent
    model_output  TEXT,                  -- the model's answer (JSON for every task)
    model_name    TEXT                   -- which model answered
);

-- One row per rating a user gave an answer. Several ratings of one answer: the latest wins.
CREATE TABLE IF NOT EXISTS feedback (
    id            BIGSERIAL   PRIMARY KEY,
    generation_id BIGINT      NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    rating        TEXT        NOT NULL,  -- THUMBS_UP | THUMBS_DOWN | EDITED (an enum type works too)
    edited_output TEXT,                  -- the user's corrected answer; required for EDITED
    comment       TEXT,                  -- free text; exported (scrubbed) as context of DPO pairs
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The export reads new ratings in (created_at, id) order and finds a generation's latest rating.
CREATE INDEX IF NOT EXISTS feedback_created_at_id_idx ON feedback (created_at, id);
CREATE INDEX IF NOT EXISTS feedback_generation_id_idx ON feedback (generation_id);
