-- Version 2 to version 3: what each run left (README "Status", backlog).
--
-- Runs in install's transaction, before routines.sql is applied again: it
-- must not call the routines (those of the previous version are still there).

-- What a run that succeeded left: the rows that expired while it ran plus those
-- it left locked (exact up to one batch, else the planner's estimate; see
-- backlog_left in routines.sql). Status warns when it grows from run to run.
-- NULL for the runs before this version.
ALTER TABLE @schema@.run ADD COLUMN backlog_after bigint;
