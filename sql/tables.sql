-- dbjobs' tables, in their current complete shape: what a fresh install creates.
--
-- `dbjobs install` runs this file once, when the schema does not hold dbjobs
-- yet, with @schema@ replaced by the quoted name of the configured schema, in
-- the same transaction as routines.sql. An existing install is never given
-- this file again: its tables are brought to this shape by the numbered files
-- of migrations/, each taking them from one version to the next, and the
-- version they are at is meta's schema_version.
--
-- Changing a table therefore takes two edits, in the same commit: the next
-- migrations/NNNN_<what>.sql, and this file, with schema_version set to NNNN
-- below. tests/test_upgrade.py checks that an install upgraded through the
-- migrations and a fresh one are the same (pg_dump --schema-only): columns
-- are in the order the migrations add them, so a new column goes last here.
--
-- Why one generic procedure reading its rule from a table (routines.sql),
-- instead of one generated procedure per job: the job's rule (table, columns,
-- retention, predicate) stays data that install can diff and status can read,
-- and the pg_cron command stays a constant `CALL @schema@.run_job('name')`.

-- IF NOT EXISTS: an empty schema made for dbjobs beforehand (to grant on it,
-- say) is taken as it is; install refuses a schema that holds anything.
CREATE SCHEMA IF NOT EXISTS @schema@;
-- dbjobs' mark: install upgrades, and uninstall drops, only a schema carrying it.
COMMENT ON SCHEMA @schema@ IS 'dbjobs: cleanup jobs run by pg_cron (managed by `dbjobs install`)';
-- Nobody but the owner needs to see inside; a monitoring role gets an explicit GRANT.
REVOKE ALL ON SCHEMA @schema@ FROM PUBLIC;

-- Settings install writes for the routines and status to read (history_retention,
-- enabled, batch_timeout, installed_at), the digest of the routines installed
-- (sql_digest) and the version of these tables (schema_version).
CREATE TABLE @schema@.meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- One row per configured job, written by install. Table and column names are
-- stored as the catalog spells them and quoted with format('%I') at run time.
CREATE TABLE @schema@.job (
    name         text PRIMARY KEY,
    table_schema name NOT NULL,
    table_name   name NOT NULL,
    expires      name[] NOT NULL CHECK (cardinality(expires) > 0),
    retain       interval NOT NULL CHECK (retain >= interval '0'),
    predicate    text,
    batch_size   integer NOT NULL CHECK (batch_size > 0),
    schedule     text NOT NULL,
    max_age      interval,
    installed_at timestamptz NOT NULL DEFAULT now(),
    -- For a partitioned table: what to do with partitions lying wholly past
    -- retention (see remove_partition in routines.sql).
    partitions   text NOT NULL DEFAULT 'drop' CHECK (partitions IN ('drop', 'detach', 'delete')),
    -- As install resolved them (the job's own value, else the top-level one):
    -- a run stops between batches once it has run this long, recorded as
    -- 'partial' (NULL: unbounded); this many consecutive failed runs make the
    -- job's status 'fail' (NULL: never).
    max_runtime  interval CHECK (max_runtime > interval '0'),
    fail_after   integer CHECK (fail_after > 0),
    -- After a failed run, retry_due runs the job again retry_after after it
    -- ended, doubling per consecutive failure, while that stays below
    -- retry_cap: the schedule's period (its shortest gap), computed by
    -- install. Both NULL: no retries.
    retry_after  interval CHECK (retry_after > interval '0'),
    retry_cap    interval,
    -- Gentle runs (see run_job): between batches, wait while a standby's
    -- replay lags more than max_replica_lag (NULL: never); pause batch_pause
    -- after each batch that deleted rows (NULL: no pause).
    max_replica_lag interval CHECK (max_replica_lag > interval '0'),
    batch_pause  interval CHECK (batch_pause >= interval '0'),
    -- The table each batch moves its rows into (schema.table, quoted as
    -- needed; NULL: rows are deleted), and whose schema partitions past
    -- retention move to (see moved_rows, remove_partition).
    archive      text
);

-- Every run, scheduled or manual, including skipped and failed ones.
-- No foreign key to job: history outlives a job removed from the config.
CREATE TABLE @schema@.run (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job                text NOT NULL,
    -- retry: started by retry_due after a failed run (retry_after).
    trigger            text NOT NULL CHECK (trigger IN ('scheduled', 'manual', 'retry')),
    -- partial: stopped at the job's max_runtime, progress that the next run goes on from.
    status             text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'skipped', 'partial')),
    started_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at        timestamptz,
    -- now() - retain when the run started: every batch deletes below it.
    cutoff             timestamptz,
    rows_deleted       bigint NOT NULL DEFAULT 0,
    error              text,
    -- How the run deletes, chosen for each relation when it starts on it
    -- ('sweep' or 'index', see next_target; 'none' when there was no relation
    -- to clean), and how far a sweep got: the next page, the relation's end,
    -- the pages of the next batch and the most a batch may take.
    strategy           text,
    sweep_next         bigint,
    sweep_end          bigint,
    pages_per_batch    integer,
    pages_max          integer,
    -- The most rows one batch deleted, and the planner's estimate of the rows
    -- to delete when the run started (for progress reports).
    largest_batch      bigint,
    estimated_rows     bigint,
    -- The relation whose rows are being deleted: the table, or one leaf
    -- partition of it at a time. Partitions still to drop or detach, and how
    -- many were.
    target             oid,
    removable          oid[],
    partitions_removed integer NOT NULL DEFAULT 0,
    -- The rows those partitions held, from the statistics (counting them would
    -- be a scan as long as the partitions are big).
    partition_rows     bigint NOT NULL DEFAULT 0,
    -- Index-driven batches walk one expiry column at a time (its position in
    -- job.expires), each batch starting from the last value the previous one saw.
    keyset_column      integer,
    keyset_from        timestamptz,
    -- Expired rows a run met but left for a later run because deleting them
    -- needed a lock that someone else held (on the row, or on a row its delete
    -- cascades to or a trigger touches): see delete_held.
    rows_skipped       bigint NOT NULL DEFAULT 0,
    -- The tables the current target's deletes cascade into (ON DELETE CASCADE,
    -- all the way down), and the rows each of them lost by cascade during this
    -- run, {"auth.refresh_tokens": 30000}: NULL when nothing cascades. Counted
    -- exactly, per statement, from the transaction's own statistics (see
    -- cascade_counts).
    cascade_tables     oid[],
    cascaded_rows      jsonb,
    -- What a run that succeeded left: the rows that expired while it ran plus
    -- those it left locked (exact up to one batch, else the planner's
    -- estimate; see backlog_left). Status warns when it grows from run to run.
    backlog_after      bigint,
    -- The time the run spent waiting for its standbys to catch up (max_replica_lag).
    replica_waited     interval NOT NULL DEFAULT interval '0'
);
-- Status reads "the latest run of each job" and "the latest success of each
-- job": each is one index probe (ORDER BY id DESC LIMIT 1) at any history size.
CREATE INDEX run_job_latest ON @schema@.run (job, id DESC);
CREATE INDEX run_job_latest_success ON @schema@.run (job, id DESC) WHERE status = 'succeeded';
-- Pruning old history deletes by age.
CREATE INDEX run_started_at ON @schema@.run (started_at);
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

-- The version of these tables: the number of the last file in migrations/.
INSERT INTO @schema@.meta (key, value) VALUES ('schema_version', '5');
