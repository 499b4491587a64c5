-- sealedkb schema 010: state shared by serving replicas, so a replica keeps nothing
-- in its home folder that another one needs.
-- Alarm state and history (monitoring/alarms.py): one row per alarm, and every state
-- change. Nothing here is content: alarm names, states and the evaluator's reasons.
CREATE TABLE IF NOT EXISTS kb_alarm_state (
    name       text PRIMARY KEY,
    record     jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS kb_alarm_history (
    id     bigserial PRIMARY KEY,
    time   timestamptz NOT NULL DEFAULT now(),
    alarm  text NOT NULL,
    change jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS kb_alarm_history_alarm ON kb_alarm_history (alarm, id);

-- Singleton jobs (store/jobs.py): which replica holds each job's session advisory
-- lock, and every round a leader ran (kept 7 days), so "exactly one replica ran it"
-- can be checked with a query.
CREATE TABLE IF NOT EXISTS kb_job_leaders (
    job          text PRIMARY KEY,
    replica      text NOT NULL,
    since        timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS kb_job_runs (
    id      bigserial PRIMARY KEY,
    job     text NOT NULL,
    replica text NOT NULL,
    ran_at  timestamptz NOT NULL DEFAULT now(),
    ok      boolean NOT NULL
);
CREATE INDEX IF NOT EXISTS kb_job_runs_time ON kb_job_runs (ran_at);
