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
-- once, by the first successful maintenance run that starts after it ended,
-- which sends those that ended since the previous successful maintenance run
-- started (a failed one sends nothing: its transaction, NOTIFY included, is
-- rolled back). Sent in pg_cron's database, where this runs: when that is
-- not the application's, a listener listens there too (`dbjobs watch` does).
--
-- {database}, {maintenance_job} and {retention} are filled in as literals by
-- `dbjobs install`.
WITH this AS (SELECT jobid FROM cron.job WHERE jobname = {maintenance_job}),
prev AS (
    -- The previous successful maintenance run (none: every failure so far).
    SELECT coalesce(max(d.runid), 0) AS runid, coalesce(max(d.start_time), '-infinity') AS start_time
      FROM (SELECT d.runid, d.start_time FROM cron.job_run_details d, this
             WHERE d.jobid = this.jobid AND d.status = 'succeeded' ORDER BY d.runid DESC LIMIT 1) d
),
cur AS (
    -- This run (none when the command is run by hand).
    SELECT coalesce(max(d.runid), (SELECT last_value + 1 FROM cron.runid_seq)) AS runid,
           coalesce(max(d.start_time), now()) AS start_time
      FROM (SELECT d.runid, d.start_time FROM cron.job_run_details d, this
             WHERE d.jobid = this.jobid AND d.status NOT IN ('succeeded', 'failed')
             ORDER BY d.runid DESC LIMIT 1) d
)
SELECT pg_notify('dbjobs', json_build_object(
           'database', j.database, 'job', regexp_replace(j.jobname, '^.*:', ''), 'run_id', NULL::bigint,
           'cron_run_id', d.runid, 'trigger', 'scheduled', 'outcome', 'failed', 'rows_deleted', 0,
           'duration_ms', NULL::bigint, 'error', left(d.return_message, 1000),
           'finished_at', to_char(d.end_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'))::text)
  FROM cron.job_run_details d JOIN cron.job j ON j.jobid = d.jobid, prev, cur
 WHERE j.database = {database} AND j.jobname LIKE 'dbjobs:%' AND j.jobname <> {maintenance_job}
   AND d.status = 'failed'
   AND (d.start_time IS NULL OR d.return_message IN ('connection failed', 'job startup timeout')
        OR d.return_message LIKE 'could not start background process%')
   -- Ended after the previous run started and before this one did: a failure
   -- pg_cron records while this runs is the next run's. pg_cron 1.4 records no
   -- end time for them: by run id there.
   AND CASE WHEN d.end_time IS NOT NULL
            THEN d.end_time > prev.start_time AND d.end_time <= cur.start_time
            ELSE d.runid > prev.runid AND d.runid < cur.runid END
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
