-- Version 4 to version 5: gentle runs (README "Gentle runs"): a replica-lag
-- throttle, a pause between batches, and archive before delete.
--
-- Runs in install's transaction, before routines.sql is applied again: it
-- must not call the routines (those of the previous version are still there).

-- Per job, as install resolved them (a job's own value, else the top-level one):
-- max_replica_lag: between batches, a run waits while a standby's replay lags
-- more than this (NULL: it never waits); batch_pause: it pauses this long after
-- each batch that deleted rows (NULL: no pause).
ALTER TABLE @schema@.job ADD COLUMN max_replica_lag interval CHECK (max_replica_lag > interval '0');
ALTER TABLE @schema@.job ADD COLUMN batch_pause interval CHECK (batch_pause >= interval '0');
-- The table each batch moves its rows into (schema.table, quoted as needed;
-- NULL: rows are deleted), and whose schema partitions past retention move to.
ALTER TABLE @schema@.job ADD COLUMN archive text;

-- The time a run spent waiting for its standbys to catch up.
ALTER TABLE @schema@.run ADD COLUMN replica_waited interval NOT NULL DEFAULT interval '0';
