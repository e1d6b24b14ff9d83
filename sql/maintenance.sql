-- The command of dbjobs' maintenance job. pg_cron runs it in its own database
-- (cron.database_name), as the role that installed dbjobs, every hour.
--
-- pg_cron never prunes cron.job_run_details. This removes the rows of this
-- application's dbjobs jobs that are older than history_retention, and no
-- other role's or application's rows (row-level security limits a role to its
-- own rows anyway). dbjobs' own history is pruned by each cleanup run.
--
-- First, it sends the failures that only pg_cron saw as events (`NOTIFY
-- dbjobs`, the payload of routines.sql's run_event): runs of this
-- application's jobs that pg_cron could not start, which therefore have no
-- run in dbjobs' history: pg_cron could not connect (the database refused the
-- role, no connection slot: 'connection failed'; pg_cron 1.4 records no times
-- for them), or found no free slot or background worker in time. Each is sent
-- once, by the first successful maintenance run after it, which sends those
-- between the previous successful maintenance run and itself (a failed one
-- sends nothing: its transaction, NOTIFY included, is rolled back). Sent in
-- pg_cron's database, where this runs: when that is not the application's, a
-- listener listens there too (`dbjobs watch` does).
--
-- {database}, {maintenance_job} and {retention} are filled in as literals by
-- `dbjobs install`.
WITH this AS (SELECT jobid FROM cron.job WHERE jobname = {maintenance_job}),
bounds AS (
    SELECT coalesce((SELECT max(d.runid) FROM cron.job_run_details d, this
                      WHERE d.jobid = this.jobid AND d.status = 'succeeded'), 0) AS after,
           -- This run's own row; none when the command is run by hand.
           coalesce((SELECT max(d.runid) FROM cron.job_run_details d, this
                      WHERE d.jobid = this.jobid AND d.status NOT IN ('succeeded', 'failed')),
                    (SELECT last_value + 1 FROM cron.runid_seq)) AS before
)
SELECT pg_notify('dbjobs', json_build_object(
           'database', j.database, 'job', regexp_replace(j.jobname, '^.*:', ''), 'run_id', NULL::bigint,
           'cron_run_id', d.runid, 'trigger', 'scheduled', 'outcome', 'failed', 'rows_deleted', 0,
           'duration_ms', NULL::bigint, 'error', left(d.return_message, 1000),
           'finished_at', to_char(d.end_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'))::text)
  FROM cron.job_run_details d JOIN cron.job j ON j.jobid = d.jobid, bounds b
 WHERE j.database = {database} AND j.jobname LIKE 'dbjobs:%' AND j.jobname <> {maintenance_job}
   AND d.status = 'failed' AND d.runid > b.after AND d.runid < b.before
   AND (d.start_time IS NULL OR d.return_message IN ('connection failed', 'job startup timeout')
        OR d.return_message LIKE 'could not start background process%')
 ORDER BY d.runid;
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
