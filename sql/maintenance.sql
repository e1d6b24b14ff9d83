-- The command of dbjobs' maintenance job. pg_cron runs it in its own database
-- (cron.database_name), as the role that installed dbjobs, every hour.
--
-- pg_cron never prunes cron.job_run_details. This removes the rows of this
-- application's dbjobs jobs that are older than history_retention, and no
-- other role's or application's rows (row-level security limits a role to its
-- own rows anyway). dbjobs' own history is pruned by each cleanup run.
--
-- {database}, {maintenance_job} and {retention} are filled in as literals by
-- `dbjobs install`.
WITH old AS (
    -- Run ids come from one server-wide sequence: every run below the last one
    -- that ended before the cutoff is older than the cutoff too. One pass.
    SELECT max(runid) AS below FROM cron.job_run_details WHERE end_time < now() - {retention}::interval
)
DELETE FROM cron.job_run_details d
 USING cron.job j, old
 WHERE j.jobid = d.jobid
   AND ((j.database = {database} AND j.jobname LIKE 'dbjobs:%') OR j.jobname = {maintenance_job})
   AND (coalesce(d.end_time, d.start_time) < now() - {retention}::interval
        -- Runs pg_cron could not start have no times at all.
        OR (d.start_time IS NULL AND d.end_time IS NULL AND d.runid < old.below))
