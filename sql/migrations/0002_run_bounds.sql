-- Version 1 to version 2: bounded runs, escalation and runs in progress
-- (README "Every run visible and bounded").
--
-- Runs in install's transaction, before routines.sql is applied again: it
-- must not call the routines (those of the previous version are still there).

-- Per job, as install resolved them (a job's own value, else the top-level one):
-- max_runtime: a run stops between batches once it has run this long, recorded
-- as 'partial' (NULL: unbounded); fail_after: this many consecutive failed runs
-- make the job's status 'fail' (NULL: never).
ALTER TABLE @schema@.job ADD COLUMN max_runtime interval CHECK (max_runtime > interval '0');
ALTER TABLE @schema@.job ADD COLUMN fail_after integer CHECK (fail_after > 0);

-- A run stopped at max_runtime is 'partial': progress, not a failure; the next run goes on.
ALTER TABLE @schema@.run DROP CONSTRAINT run_status_check;
ALTER TABLE @schema@.run ADD CONSTRAINT run_status_check
    CHECK (status IN ('running', 'succeeded', 'failed', 'skipped', 'partial'));

-- Status reads a job's latest partial run and its run in progress: one probe
-- each of these small partial indexes, however long the history.
CREATE INDEX run_job_latest_partial ON @schema@.run (job, id DESC) WHERE status = 'partial';
CREATE INDEX run_job_running ON @schema@.run (job, id DESC) WHERE status = 'running';

-- Runs per job and outcome since install, for dbjobs_job_runs_total{job,outcome}:
-- a Prometheus counter must never go down, which a count over the pruned history
-- would, and counting the history on each scrape would cost a scan per job.
-- finish_run (and start_run, for a skipped run) add one.
CREATE TABLE @schema@.run_count (
    job     text NOT NULL,
    outcome text NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'skipped', 'partial')),
    runs    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (job, outcome)
);
-- Counting starts from the history this install still holds.
INSERT INTO @schema@.run_count (job, outcome, runs)
SELECT job, status, count(*) FROM @schema@.run WHERE status <> 'running' GROUP BY job, status;
