-- Version 3 to version 4: retry with backoff (README "Retry with backoff").
--
-- Runs in install's transaction, before routines.sql is applied again: it
-- must not call the routines (those of the previous version are still there).

-- Per job, as install resolved them: after a failed run, retry_due runs the
-- job again retry_after after it ended, doubling per consecutive failure,
-- while that stays below retry_cap (the schedule's period, computed by
-- install). Both NULL: no retries.
ALTER TABLE @schema@.job ADD COLUMN retry_after interval CHECK (retry_after > interval '0');
ALTER TABLE @schema@.job ADD COLUMN retry_cap interval;

-- A run started by retry_due is recorded with trigger 'retry'.
ALTER TABLE @schema@.run DROP CONSTRAINT run_trigger_check;
ALTER TABLE @schema@.run ADD CONSTRAINT run_trigger_check CHECK (trigger IN ('scheduled', 'manual', 'retry'));
