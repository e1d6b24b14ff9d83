-- name: installed
-- Whether dbjobs is installed in this schema, and whether this role may read
-- pg_cron's rows of dbjobs' jobs directly (it installed them, or is a superuser).
SELECT c.oid IS NOT NULL,
       n.nspowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
           OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
  FROM pg_namespace n
  LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'run'
 WHERE n.nspname = %(schema)s;

-- name: cron_latest_runs
-- When pg_cron lives in another database: the same as the status_cron()
-- function of routines.sql, over there (the latest finished run of each job,
-- and its latest run when that is still starting, connecting or sending). The floor is the latest runid (read from
-- the sequence: max(runid) under row-level security could scan the whole
-- table) minus the window, passed as a value so that the planner sees how few
-- rows the range holds.
WITH runs AS MATERIALIZED (
    SELECT d.jobid, d.runid, d.status, d.return_message, d.start_time, d.end_time
      FROM cron.job_run_details d
     WHERE d.runid > %(floor)s
       AND d.jobid = ANY(%(jobids)s::bigint[]))
SELECT j.jobid, l.status, l.return_message, l.start_time, l.end_time, p.status, p.start_time
  FROM (SELECT DISTINCT ON (r.jobid) r.jobid FROM runs r) AS j
  LEFT JOIN (SELECT DISTINCT ON (r.jobid) r.* FROM runs r
              WHERE r.status IN ('succeeded', 'failed') ORDER BY r.jobid, r.runid DESC) AS l
         ON l.jobid = j.jobid
  LEFT JOIN (SELECT DISTINCT ON (r.jobid) r.* FROM runs r ORDER BY r.jobid, r.runid DESC) AS p
         ON p.jobid = j.jobid AND p.status IN ('starting', 'connecting', 'sending');

-- name: scheduler
-- Whether pg_cron's launcher is alive. application_name is visible in other
-- roles' rows, backend_type is not (without pg_read_all_stats); the third
-- column says whether this role can see other sessions at all.
SELECT pg_is_in_recovery(),
       -- Any session may call itself 'pg_cron scheduler': the launcher also runs
       -- as the bootstrap superuser (OID 10) in pg_cron's database.
       EXISTS (SELECT FROM pg_stat_activity
                WHERE application_name = 'pg_cron scheduler' AND usesysid = 10
                  AND datname = current_database()),
       pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')
           OR EXISTS (SELECT FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND application_name IS NOT NULL),
       now(),
       %(grace)s::interval,
       pg_has_role(current_user, 'pg_read_all_settings', 'USAGE'),
       -- pg_cron's settings are visible to superusers and pg_read_all_settings only
       -- (NULL where the library does not define them: pg_cron 1.4 has no cron.timezone).
       -- current_setting, not the pg_settings view, which builds a row for every setting.
       CASE WHEN pg_has_role(current_user, 'pg_read_all_settings', 'USAGE') THEN
           jsonb_strip_nulls(jsonb_build_object(
               'cron.timezone', current_setting('cron.timezone', true),
               'cron.launch_active_jobs', current_setting('cron.launch_active_jobs', true),
               'cron.log_run', current_setting('cron.log_run', true)))
       END,
       pg_postmaster_start_time();

-- name: cron_last_runid
SELECT last_value FROM cron.runid_seq;

-- name: resolve_config
-- A configuration's tables and intervals as install would store them, so that
-- status can say how the configuration differs from what is installed.
SELECT (SELECT ARRAY[n.nspname::text, c.relname::text]
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = to_regclass(u.tbl)),
       u.retain::interval::text,
       u.max_age::interval::text,
       u.max_runtime::interval::text,
       u.retry_after::interval::text,
       u.lag::interval::text,
       u.pause::interval::text,
       -- the archive as install stores it: "schema"."table", a bare name in the table's schema
       (SELECT string_agg('"' || replace(p.part, '"', '""') || '"', '.' ORDER BY p.n)
          FROM unnest(CASE WHEN cardinality(parse_ident(u.archive)) = 1
                           THEN (SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                  WHERE c.oid = to_regclass(u.tbl)) || parse_ident(u.archive)
                           ELSE parse_ident(u.archive) END) WITH ORDINALITY AS p(part, n))
  FROM unnest(%(tables)s::text[], %(retains)s::text[], %(max_ages)s::text[], %(max_runtimes)s::text[],
              %(retry_afters)s::text[], %(lags)s::text[], %(pauses)s::text[], %(archives)s::text[])
       WITH ORDINALITY AS u(tbl, retain, max_age, max_runtime, retry_after, lag, pause, archive, i)
 ORDER BY u.i;

-- name: cron_failures
-- doctor: pg_cron's recent failures of dbjobs' jobs, by message, over the
-- server's latest 2,000 runs (cron.job_run_details is indexed on runid only).
SELECT d.return_message, count(*), max(coalesce(d.end_time, d.start_time))
  FROM cron.job_run_details d
  JOIN cron.job j ON j.jobid = d.jobid
 WHERE d.runid > (SELECT last_value FROM cron.runid_seq) - 2000
   AND d.status = 'failed'
   AND j.jobname = ANY(%(jobnames)s::text[])
 GROUP BY d.return_message
 ORDER BY max(d.runid) DESC
 LIMIT 20;

-- name: cron_orphans
-- doctor: dbjobs' pg_cron jobs whose role is gone (visible to a superuser:
-- pg_cron's row-level security shows other roles only their own jobs).
SELECT j.jobid, j.jobname, j.username
  FROM cron.job j
 WHERE j.jobname = ANY(%(jobnames)s::text[])
   AND NOT EXISTS (SELECT FROM pg_roles r WHERE r.rolname = j.username);
