-- name: job_history
-- Each configured job's definition time and its latest finished run and latest
-- success: one probe each of the (job, id DESC) indexes, whatever the size of
-- the history.
SELECT n.name,
       coalesce(j.installed_at, (SELECT value::timestamptz FROM {meta} WHERE key = 'installed_at')),
       j.max_age,
       last.started_at, last.finished_at, last.status, last.error, last.rows_deleted,
       success.finished_at
  FROM unnest(%(names)s::text[]) AS n(name)
  LEFT JOIN {job} j ON j.name = n.name
  LEFT JOIN LATERAL (
        SELECT r.started_at, r.finished_at, r.status, r.error, r.rows_deleted
          FROM {run} r
         WHERE r.job = n.name AND r.status IN ('succeeded', 'failed')
         ORDER BY r.id DESC LIMIT 1) last ON true
  LEFT JOIN LATERAL (
        SELECT r.finished_at
          FROM {run} r
         WHERE r.job = n.name AND r.status = 'succeeded'
         ORDER BY r.id DESC LIMIT 1) success ON true;

-- name: cron_latest_runs
-- pg_cron's latest finished run of each of dbjobs' jobs, looking only at the server's
-- latest runs (a window of two thousand). cron.job_run_details is indexed on runid alone (and on
-- managed services nobody may add an index), so a per-job "latest row" would
-- scan the whole table backwards for a job that has not run lately. The
-- sequence is read instead of max(runid), which row-level security could turn
-- into a full scan too, and passed in as a value (not a subquery) so that the
-- planner sees how few rows the range holds. A run pg_cron could not even
-- start (connection failed) is only recorded here; older failures show up as
-- staleness anyway.
SELECT DISTINCT ON (d.jobid) d.jobid, d.status, d.return_message, d.start_time, d.end_time
  FROM cron.job_run_details d
 WHERE d.runid > %(floor)s
   AND d.jobid = ANY(%(jobids)s::bigint[])
   AND d.status IN ('succeeded', 'failed')
 ORDER BY d.jobid, d.runid DESC;

-- name: scheduler
-- Whether pg_cron's launcher is alive. application_name is visible in other
-- roles' rows, backend_type is not (without pg_read_all_stats); the third
-- column says whether this role can see other sessions at all.
SELECT pg_is_in_recovery(),
       EXISTS (SELECT FROM pg_stat_activity WHERE application_name = 'pg_cron scheduler'),
       pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')
           OR EXISTS (SELECT FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND application_name IS NOT NULL),
       now(),
       %(grace)s::interval,
       (SELECT last_value FROM cron.runid_seq);
