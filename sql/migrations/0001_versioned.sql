-- Version 0 (an install by a dbjobs from before schema versions: meta has no
-- schema_version) to version 1 (the tables of the last release without them).
--
-- Before versions, install ran its whole SQL file on every upgrade: CREATE
-- TABLE IF NOT EXISTS with the first columns, then one ADD COLUMN IF NOT
-- EXISTS per column added since. This is that pile, so that an install made by
-- any of those builds ends with every column of version 1, in the order a
-- fresh install of that release created them (that release's own install had
-- them all already: for it, every statement here changes nothing).
--
-- Each migration runs in install's transaction, after the previous one, with
-- @schema@ replaced; install then records its number as schema_version. The
-- routines of the previous install are still in place while it runs, and are
-- dropped and created again right after: a migration must not call them.

ALTER TABLE @schema@.job ADD COLUMN IF NOT EXISTS partitions text NOT NULL DEFAULT 'drop'
    CHECK (partitions IN ('drop', 'detach', 'delete'));

ALTER TABLE @schema@.run ADD COLUMN IF NOT EXISTS strategy text;
ALTER TABLE @schema@.run ADD COLUMN IF NOT EXISTS sweep_next bigint;
ALTER TABLE @schema@.run ADD COLUMN IF NOT EXISTS sweep_end bigint;
ALTER TABLE @schema@.run ADD COLUMN IF NOT EXISTS pages_per_batch integer;
ALTER TABLE @schema@.run ADD COLUMN IF NOT EXISTS pages_max integer;
ALTER TABLE @schema@.run ADD COLUMN IF NOT EXISTS largest_batch bigint;
ALTER TABLE @schema@.run ADD COLUMN IF NOT EXISTS estimated_rows bigint;
ALTER TABLE @schema@.run ADD COLUMN IF NOT EXISTS target oid;
ALTER TABLE @schema@.run ADD COLUMN IF NOT EXISTS removable oid[];
ALTER TABLE @schema@.run ADD COLUMN IF NOT EXISTS partitions_removed integer NOT NULL DEFAULT 0;
ALTER TABLE @schema@.run ADD COLUMN IF NOT EXISTS partition_rows bigint NOT NULL DEFAULT 0;
ALTER TABLE @schema@.run ADD COLUMN IF NOT EXISTS keyset_column integer;
ALTER TABLE @schema@.run ADD COLUMN IF NOT EXISTS keyset_from timestamptz;
ALTER TABLE @schema@.run ADD COLUMN IF NOT EXISTS rows_skipped bigint NOT NULL DEFAULT 0;
ALTER TABLE @schema@.run ADD COLUMN IF NOT EXISTS cascade_tables oid[];
ALTER TABLE @schema@.run ADD COLUMN IF NOT EXISTS cascaded_rows jsonb;

CREATE INDEX IF NOT EXISTS run_job_latest ON @schema@.run (job, id DESC);
CREATE INDEX IF NOT EXISTS run_job_latest_success ON @schema@.run (job, id DESC) WHERE status = 'succeeded';
CREATE INDEX IF NOT EXISTS run_started_at ON @schema@.run (started_at);
