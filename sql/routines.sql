-- dbjobs' routines: the cleanup procedure that pg_cron calls, the functions it
-- is made of, and the status functions.
--
-- `dbjobs install` runs this file in one transaction on every install that
-- changes it (its digest is meta's sql_digest), after tables.sql or the
-- migrations, with @schema@ replaced by the quoted name of the configured
-- schema and each @NAME@ below by the value of its tuning constant. Every
-- routine is dropped first and created again, so nothing of an older version
-- survives (see the DO block below). It reads top to bottom: what a job
-- deletes, the procedure, one run, one batch, then status.


-- Tuning constants. Each `-- define NAME = VALUE` line names one; install
-- writes VALUE wherever @NAME@ appears in this file, so that a value lives in
-- one place and may be used where only a literal can stand (a SET clause).
-- install refuses an @NAME@ that is not defined here and a constant that
-- nothing uses. README "Tuning constants" says why each has its value.
--
-- define sweep_share = 0.05
--     Sweep a relation in physical order when the planner expects at least
--     this share of its rows to be expired; index-driven batches below it.
-- define sweep_pages_max = 100000
--     The most pages one sweep batch covers (781 MiB of 8 kB pages).
-- define sweep_growth = 10
--     A sweep batch covers at most this many times the pages of the first.
-- define sweep_resize_max = 2
-- define sweep_resize_min = 0.25
--     From one sweep batch to the next, its pages change by at most these factors.
-- define slow_batch = 250 ms
--     A sweep batch slower than this halves the next one's pages.
-- define lock_timeout = 200ms
--     How long a batch, or a partition's DROP or DETACH, waits for a lock.
-- define held_lock_timeout = 50ms
--     How long each delete of a batch's locked rows (a chunk, a row) waits
--     for a lock that deleting them needs (see delete_held).
-- define held_chunk = 100
--     Those rows are deleted this many at a time, then one at a time.
-- define held_waits = 20
--     A batch waits that way at most this many times, then leaves its rest.
-- define retry_early = 5 seconds
--     retry_due runs a retry due within this long: pg_cron starts _retry a few
--     milliseconds into each minute, just before a retry of a scheduled run
--     (which failed a few milliseconds into its minute) comes due.
-- define status_window_max = 10000
--     The most runs of pg_cron's history status_cron() reads, whatever it is asked.
-- define status_runs_max = 100
--     The most finished runs per job status_runs() returns, whatever it is asked.
-- define backlog_exact_max = 10000
--     A job's backlog is counted exactly up to this many rows, else estimated.


-- Routines are dropped and created again on every install or upgrade, in the
-- same transaction: an old signature left behind would overload run_job and
-- make pg_cron's `CALL run_job('name')` ambiguous, and a routine an older
-- version had and this one has not would stay.
DO $$
DECLARE
    routine record;
BEGIN
    FOR routine IN
        SELECT p.oid::regprocedure AS signature, p.prokind
          FROM pg_catalog.pg_proc p
         -- The schema, found without writing its name into a string literal.
         WHERE p.pronamespace = (SELECT t.typnamespace FROM pg_catalog.pg_type t
                                  WHERE t.oid = pg_catalog.pg_typeof(NULL::@schema@.job))
    LOOP
        EXECUTE pg_catalog.format('DROP %s %s',
            CASE routine.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, routine.signature);
    END LOOP;
END
$$;


-- ===========================================================================
-- What a job deletes
-- ===========================================================================

-- The rows a job deletes: (c1 < $1 OR c2 < $1 ...) AND (predicate), where $1 is
-- the run's cutoff, now() - retain. One comparison per column, OR-ed, so that an
-- index on each column can serve it (a BitmapOr); NULL columns never match.
--
-- Names in the predicate resolve with search_path = pg_catalog, <the table's
-- schema>, pg_temp, here as at install (catalog.py checks it with the same
-- path): a predicate that validates also runs, whatever the search_path of
-- the role, of pg_cron's session or of the installing connection. pg_catalog
-- comes first so that an object created in the table's schema cannot take the
-- place of a built-in function or operator of the same signature; pg_temp
-- comes last (left out, it would be searched first for tables and types).
-- Every statement that evaluates the predicate sets that path just for itself
-- (set_config(..., true), undone when the function returns: a SET clause
-- restores the setting on exit); dbjobs' own statements keep the pinned one.
CREATE FUNCTION @schema@.expired_rule(j @schema@.job)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT '(' || string_agg(format('%I < $1', c), ' OR ') || ')'
           -- The newline keeps a trailing "-- comment" in the predicate from
           -- swallowing the closing parenthesis. Install has checked that the
           -- predicate is one boolean expression.
           || coalesce(E' AND (' || j.predicate || E'\n)', '')
    FROM unnest(j.expires) AS c
$$;


-- ===========================================================================
-- The procedure
-- ===========================================================================

-- What pg_cron runs: `CALL @schema@.run_job('name')`. It opens the run, then
-- runs one step (delete_batch) per transaction, committing after each, so a
-- large backlog never becomes one long transaction and a run stopped half-way
-- keeps what it deleted; then it closes the run.
--
-- No SET search_path here: a procedure with a SET clause may not COMMIT. It
-- calls only schema-qualified functions, which pin their own.
CREATE PROCEDURE @schema@.run_job(
    job_name text,
    run_trigger text DEFAULT 'scheduled',
    INOUT run_id bigint DEFAULT NULL
)
LANGUAGE plpgsql
AS $$
DECLARE
    deleted bigint;
    failure text;
    failure_state text;
    failure_detail text;
    failure_hint text;
    -- PostgreSQL 17+: a bound on each batch's transaction (see below).
    batch_timeout text := CASE WHEN current_setting('server_version_num')::int >= 170000
                               THEN (SELECT m.value FROM @schema@.meta m WHERE m.key = 'batch_timeout') END;
    -- The job's max_runtime (NULL: unbounded): checked between batches, so a
    -- run may overrun it by one batch, which batch_timeout bounds.
    bound interval := (SELECT j.max_runtime FROM @schema@.job j WHERE j.name = job_name);
    -- Whether it waits between batches at all (batch_pause, max_replica_lag).
    gentle boolean := (SELECT j.batch_pause > interval '0' OR j.max_replica_lag IS NOT NULL
                         FROM @schema@.job j WHERE j.name = job_name);
    began timestamptz := clock_timestamp();
    stopped boolean := false;
    -- The primary's WAL position when the standbys were last seen caught up
    -- with it, and when (see replicas_behind).
    lag_mark pg_lsn;
    lag_mark_at timestamptz;
BEGIN
    run_id := @schema@.start_run(job_name, run_trigger);
    IF run_id IS NULL THEN
        RAISE NOTICE 'dbjobs: job "%" is already running; this run was skipped', job_name;
        RETURN;
    END IF;
    COMMIT;

    LOOP
        -- A batch's COMMIT does not wait for its WAL to reach disk (or a
        -- synchronous standby): with fsync on, that wait made every batch
        -- slower than the single DELETE it replaces. A crash can lose the last
        -- batches' commits, which only means that the next run deletes those
        -- rows again; the run's own bookkeeping is in the same transactions.
        -- finish_run's transaction commits as the server is configured.
        PERFORM pg_catalog.set_config('synchronous_commit', 'off', true);
        -- No batch may take longer than batch_timeout (PostgreSQL 17+): a
        -- procedure's COMMITs restart transaction_timeout, where the statement
        -- timer runs for the whole CALL. Past it PostgreSQL ends the session:
        -- that batch is rolled back, the ones before it stay, and the run is
        -- recorded as failed (by `dbjobs run`, or pg_cron and the next run).
        IF batch_timeout IS NOT NULL THEN
            PERFORM pg_catalog.set_config('transaction_timeout', batch_timeout, true);
        END IF;
        BEGIN
            deleted := @schema@.delete_batch(run_id);
        EXCEPTION WHEN OTHERS THEN
            -- The message, DETAIL and HINT: what a person needs. Never the
            -- CONTEXT, which quotes dbjobs' own statements.
            GET STACKED DIAGNOSTICS failure = MESSAGE_TEXT, failure_state = RETURNED_SQLSTATE,
                                    failure_detail = PG_EXCEPTION_DETAIL, failure_hint = PG_EXCEPTION_HINT;
        END;
        EXIT WHEN failure IS NOT NULL OR deleted IS NULL;
        COMMIT;
        -- Past max_runtime: stop here, between batches, with every batch so far
        -- committed. The run is 'partial' and the next one goes on: each run
        -- starts from the rows still expired, so there is no position to keep.
        IF bound IS NOT NULL AND clock_timestamp() - began >= bound THEN
            stopped := true;
            EXIT;
        END IF;
        -- After a batch that deleted rows: batch_pause, and the wait for
        -- lagging standbys (max_replica_lag), each bounded by max_runtime.
        IF deleted > 0 AND gentle THEN
            CALL @schema@.between_batches(run_id, began + bound, lag_mark, lag_mark_at, stopped);
            EXIT WHEN stopped;
        END IF;
    END LOOP;

    PERFORM @schema@.finish_run(run_id, @schema@.one_line_error(failure, failure_detail, failure_hint), stopped);
    COMMIT;
    -- Fail the CALL too, so that pg_cron's own history says failed.
    IF failure IS NOT NULL THEN
        RAISE EXCEPTION USING MESSAGE = failure, ERRCODE = failure_state,
                              DETAIL = coalesce(failure_detail, ''), HINT = coalesce(failure_hint, '');
    END IF;
END
$$;


-- Between two batches of a run (README "Gentle runs"): sleeps the job's
-- batch_pause, then waits while a standby lags more than its max_replica_lag,
-- adding that wait to run.replica_waited. Both in steps of at most 100 ms,
-- each committed, so that no snapshot is held for longer than a step (one
-- held for the whole wait would hold back vacuum everywhere), and both end
-- at `deadline` (the run's max_runtime; NULL: none), which sets `stopped`:
-- the run then ends 'partial'. Without a max_runtime, a standby whose replay
-- stays stopped holds the run (and the job's later runs are skipped) until
-- it catches up. lag_mark and lag_mark_at carry replicas_behind's mark from
-- one batch to the next. The 100 ms steps are not a tuning constant: they
-- only bound how long a snapshot lives and how late a wait ends.
CREATE PROCEDURE @schema@.between_batches(run_id bigint, deadline timestamptz, INOUT lag_mark pg_lsn,
                                          INOUT lag_mark_at timestamptz, INOUT stopped boolean)
LANGUAGE plpgsql
AS $$
DECLARE
    pause     interval;
    lag_limit interval;
    until     timestamptz;
    waiting   timestamptz;
    behind    boolean;
BEGIN
    SELECT j.batch_pause, j.max_replica_lag INTO pause, lag_limit
      FROM @schema@.run r JOIN @schema@.job j ON j.name = r.job WHERE r.id = run_id;
    COMMIT;
    IF pause > interval '0' THEN
        until := least(clock_timestamp() + pause, deadline);
        WHILE clock_timestamp() < until LOOP
            PERFORM pg_catalog.pg_sleep(least(0.1, extract(epoch FROM until - clock_timestamp())));
            COMMIT;
        END LOOP;
    END IF;
    IF lag_limit IS NOT NULL THEN
        LOOP
            SELECT b.mark, b.marked_at, b.behind INTO lag_mark, lag_mark_at, behind
              FROM @schema@.replicas_behind(lag_limit, lag_mark, lag_mark_at) AS b;
            COMMIT;
            EXIT WHEN NOT behind;
            waiting := coalesce(waiting, clock_timestamp());
            IF clock_timestamp() >= deadline THEN
                stopped := true;
                EXIT;
            END IF;
            PERFORM pg_catalog.pg_sleep(0.1);
            COMMIT;
        END LOOP;
        IF waiting IS NOT NULL THEN
            UPDATE @schema@.run SET replica_waited = replica_waited + (clock_timestamp() - waiting)
             WHERE id = run_id;
            COMMIT;
        END IF;
    END IF;
    IF deadline IS NOT NULL AND clock_timestamp() >= deadline THEN
        stopped := true;
    END IF;
END
$$;


-- Whether a standby (a row of pg_stat_replication: a physical standby or a
-- logical subscriber) lags more than lag_limit behind this server. Two signs,
-- either enough: its replay_lag, as the server measured it (NULL when the
-- standby is idle, and stale while the primary writes nothing); and a mark,
-- this server's WAL position when every standby had replayed the previous
-- mark: a standby still short of the mark lag_limit after it was taken lags
-- at least that much, whatever replay_lag says (a standby whose replay is
-- paused, say). Needs pg_read_all_stats (or pg_monitor): install checks it,
-- and so does each run's first step (see replica_lag_readable).
CREATE FUNCTION @schema@.replicas_behind(lag_limit interval, INOUT mark pg_lsn, INOUT marked_at timestamptz,
                                         OUT behind boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    oldest pg_lsn;
    worst  interval;
BEGIN
    -- Only the senders that replay: pg_receivewal and pg_basebackup's WAL stream
    -- (a backup tool archiving WAL) report no replay position, ever.
    SELECT min(s.replay_lsn), max(s.replay_lag) INTO oldest, worst
      FROM pg_stat_replication s
     WHERE s.replay_lsn IS NOT NULL;
    IF oldest IS NULL THEN  -- no standby
        mark := NULL;
        marked_at := NULL;
        behind := false;
        RETURN;
    END IF;
    IF mark IS NULL OR oldest >= mark THEN
        -- Where this server has written WAL to, flushed or not (a batch's
        -- commit is asynchronous, see run_job).
        mark := pg_current_wal_insert_lsn();
        marked_at := clock_timestamp();
    END IF;
    behind := coalesce(worst > lag_limit, false) OR clock_timestamp() - marked_at > lag_limit;
END
$$;


-- Refuses a run of a job with max_replica_lag by a role that cannot read the
-- standbys' positions: pg_stat_replication would show it NULLs, and the
-- throttle would wait on every standby until max_runtime. Install checks the
-- same; this is for a grant revoked since.
CREATE FUNCTION @schema@.replica_lag_readable()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') THEN
        RAISE EXCEPTION 'max_replica_lag: role % may not read the standbys'' replay lag', quote_ident(current_user)
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('GRANT pg_monitor TO %I, or leave max_replica_lag out and install again',
                                current_user);
    END IF;
END
$$;


-- ===========================================================================
-- A run: opened, closed
-- ===========================================================================

-- Opens a run: records it as running and returns its id, or records it as
-- skipped and returns NULL when another session is running the same job.
-- A skipped run, and a run it finds interrupted, send their events (run_event).
CREATE FUNCTION @schema@.start_run(job_name text, run_trigger text)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    j        @schema@.job;
    run_id   bigint;
    cutoff   timestamptz;
    ended    bigint := 0;
    r        @schema@.run;
BEGIN
    SELECT * INTO j FROM @schema@.job WHERE name = job_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'dbjobs: unknown job "%"', job_name
            USING ERRCODE = 'undefined_object', HINT = 'Run `dbjobs install` to register it.';
    END IF;

    -- A session-level lock, held across the procedure's COMMITs and released
    -- by finish_run or when the session ends (a killed run frees it too).
    IF NOT pg_try_advisory_lock(hashtext('dbjobs.run'), hashtext(job_name)) THEN
        INSERT INTO @schema@.run (job, trigger, status, finished_at, error)
        VALUES (job_name, run_trigger, 'skipped', clock_timestamp(), 'another run of this job was in progress')
        RETURNING * INTO r;
        PERFORM @schema@.count_outcome(job_name, 'skipped');
        PERFORM pg_notify('dbjobs', @schema@.run_event(r)::text);
        RAISE LOG 'dbjobs: job % skipped: another run of this job was in progress', job_name;
        RETURN NULL;
    END IF;

    -- Holding the lock means no other run of this job is alive: a row still
    -- marked running belongs to a session that died (terminated, crashed).
    FOR r IN
        UPDATE @schema@.run
           SET status = 'failed', finished_at = coalesce(finished_at, clock_timestamp()),
               error = 'interrupted: the session running it ended before it finished'
         WHERE job = job_name AND status = 'running'
        RETURNING *
    LOOP
        ended := ended + 1;
        PERFORM pg_notify('dbjobs', @schema@.run_event(r)::text);
    END LOOP;
    IF ended > 0 THEN
        PERFORM @schema@.count_outcome(job_name, 'failed', ended);
    END IF;

    -- The planner's estimate of the rows to delete, for progress reports. The
    -- partitions to remove are listed by the run's first batch (see
    -- delete_batch), where a failure (the table dropped, a privilege revoked)
    -- is recorded on this run like any other.
    cutoff := now() - j.retain;
    INSERT INTO @schema@.run (job, trigger, status, cutoff, estimated_rows)
    VALUES (job_name, run_trigger, 'running', cutoff,
            @schema@.expired_estimate(j, format('%I.%I', j.table_schema, j.table_name), cutoff)::bigint)
    RETURNING id INTO run_id;
    RETURN run_id;
END
$$;


-- Closes a run as succeeded (error IS NULL), failed, or partial (stopped at
-- max_runtime), records what a run that succeeded left (backlog_left), releases
-- its lock, counts its outcome, sends its event (`NOTIFY dbjobs`, see
-- run_event), writes one line to the server log, and prunes this job's history
-- older than history_retention (set
-- by install), so that the history never grows without bound.
CREATE FUNCTION @schema@.finish_run(run_id bigint, failure text, stopped boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    job_name text;
    outcome  text := CASE WHEN failure IS NOT NULL THEN 'failed' WHEN stopped THEN 'partial' ELSE 'succeeded' END;
    deleted  bigint;
    took     float8;
BEGIN
    UPDATE @schema@.run
       SET status = outcome,
           finished_at = clock_timestamp(),
           error = failure,
           -- Partial and failed runs left rows below their cutoff, which only
           -- a walk over what they deleted could count (see backlog_left).
           backlog_after = CASE WHEN outcome = 'succeeded' AND cutoff IS NOT NULL
                                THEN @schema@.backlog_left(job, cutoff) + rows_skipped END
     WHERE id = run_id
    RETURNING job, rows_deleted + partition_rows, extract(epoch FROM finished_at - started_at) * 1000
         INTO job_name, deleted, took;
    PERFORM pg_advisory_unlock(hashtext('dbjobs.run'), hashtext(job_name));
    PERFORM @schema@.count_outcome(job_name, outcome);
    PERFORM pg_notify('dbjobs', @schema@.run_event(r)::text) FROM @schema@.run r WHERE r.id = run_id;
    -- One line per run in the server log, for log-based alerting (LOG goes to
    -- the server log at the default log_min_messages, not to the client).
    RAISE LOG 'dbjobs: job % deleted % rows in % ms (%)%', job_name, deleted, round(took::numeric),
              outcome, coalesce(': ' || failure, '');
    -- Never the job's latest success nor anything after it (a job failing for
    -- longer than the retention keeps its last success), nor its latest run.
    DELETE FROM @schema@.run
     WHERE job = job_name
       AND started_at < now() - (SELECT value::interval FROM @schema@.meta WHERE key = 'history_retention')
       AND id < coalesce((SELECT max(id) FROM @schema@.run WHERE job = job_name AND status = 'succeeded'),
                         run_id);
END
$$;


-- The rows a job's rule matches at `cutoff`, that is what a run would delete
-- (the rows of partitions it would drop or detach included): counted up to
-- backlog_exact_max (a LIMIT: an index range read of that many rows at most),
-- beyond it the planner's estimate, and never less than what was counted.
-- For status_backlog.
CREATE FUNCTION @schema@.count_expired(j @schema@.job, cutoff timestamptz, OUT total bigint, OUT exact boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    rel  text := format('%I.%I', j.table_schema, j.table_name);
    rule text := @schema@.expired_rule(j);
BEGIN
    -- The predicate's names resolve as in every batch (see expired_rule).
    PERFORM set_config('search_path', format('pg_catalog, %I, pg_temp', j.table_schema), true);
    EXECUTE format('SELECT count(*) FROM (SELECT FROM %s WHERE %s LIMIT @backlog_exact_max@ + 1) AS t', rel, rule)
       INTO total USING cutoff;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    exact := total <= @backlog_exact_max@;
    IF NOT exact THEN
        total := greatest(total, @schema@.expired_estimate(j, rel, cutoff)::bigint);
    END IF;
END
$$;


-- What a run that succeeded left, for finish_run to record (run.backlog_after)
-- and status to compare over the latest runs, to tell a backlog that grows:
-- the rows that expired while it ran (its rule matches them at now() - retain
-- but not at the run's cutoff, `since`), to which finish_run adds the rows the
-- run left locked (rows_skipped). Everything below the cutoff the run has been
-- through: counting there would walk every row it just deleted (dead index
-- entries and heap tuples until VACUUM), where this reads only an index range
-- per expiry column above the cutoff. Counted up to one batch (batch_size, at
-- most backlog_exact_max), beyond it the planner's estimate: never more than
-- the reads of one more batch. NULL when it cannot be counted.
CREATE FUNCTION @schema@.backlog_left(job_name text, since timestamptz)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    j     @schema@.job;
    rel   text;
    range text;
    cap   bigint;
    total bigint;
    plan  json;
BEGIN
    SELECT * INTO STRICT j FROM @schema@.job WHERE name = job_name;
    rel := format('%I.%I', j.table_schema, j.table_name);
    cap := least(j.batch_size, @backlog_exact_max@);
    -- As expired_rule, with each column's comparison narrowed to [since, $1).
    SELECT '(' || string_agg(format('(%1$I >= $2 AND %1$I < $1)', c), ' OR ') || ')'
           || coalesce(E' AND (' || j.predicate || E'\n)', '')
      INTO range FROM unnest(j.expires) AS c;
    PERFORM set_config('search_path', format('pg_catalog, %I, pg_temp', j.table_schema), true);
    EXECUTE format('SELECT count(*) FROM (SELECT FROM %s WHERE %s LIMIT %s) AS t', rel, range, cap + 1)
       INTO total USING now() - j.retain, since;
    IF total > cap THEN
        EXECUTE format('EXPLAIN (FORMAT JSON) SELECT 1 FROM %s WHERE %s', rel, range)
           INTO plan USING now() - j.retain, since;
        total := greatest(total, (plan -> 0 -> 'Plan' ->> 'Plan Rows')::float8::bigint);
    END IF;
    RETURN total;
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END
$$;


-- Adds one run to the job's count of runs with that outcome (run_count), which
-- dbjobs_job_runs_total{job,outcome} reports: a counter, never pruned.
CREATE FUNCTION @schema@.count_outcome(job_name text, outcome text, n bigint DEFAULT 1)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO @schema@.run_count AS c (job, outcome, runs) VALUES (job_name, outcome, n)
    ON CONFLICT (job, outcome) DO UPDATE SET runs = c.runs + excluded.runs
$$;


-- A finished run's event, as `NOTIFY dbjobs` sends it (start_run, finish_run)
-- and status_events returns it. pg_notify in the transaction that records
-- the outcome: listeners get the event when, and only if, it commits. The
-- error is cut to 1,000 characters, which keeps the payload well under
-- NOTIFY's 8,000 bytes (job names are at most 40 characters). cron_run_id is
-- set only in the events of maintenance.sql (runs pg_cron could not start).
CREATE FUNCTION @schema@.run_event(r @schema@.run)
RETURNS json
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
    SELECT json_build_object(
        'database', current_database(), 'job', r.job, 'run_id', r.id, 'cron_run_id', NULL::bigint,
        'trigger', r.trigger, 'outcome', r.status, 'rows_deleted', r.rows_deleted + r.partition_rows,
        'duration_ms', round(extract(epoch FROM r.finished_at - r.started_at) * 1000)::bigint,
        'error', left(r.error, 1000), 'finished_at', r.finished_at)
$$;


-- An error as status shows it: PostgreSQL's message, then its DETAIL and HINT
-- where there are any, on one line, at most 500 characters.
CREATE FUNCTION @schema@.one_line_error(message text, detail text, hint text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT left(regexp_replace(message || coalesce(' (' || nullif(detail, '') || ')', '')
                               || coalesce(' hint: ' || nullif(hint, ''), ''),
                               '\s+', ' ', 'g'), 500)
$$;


-- ===========================================================================
-- One step of a run
-- ===========================================================================

-- One step of the run, in its own transaction: list the partitions to remove
-- (the first step), remove one, point the run at its next relation, or delete
-- one batch from the current one. Returns the rows deleted (0 for a step that
-- deletes none), or NULL when the run is done.
--
-- TimeZone is pinned so that timestamp and date columns are read as UTC by
-- scheduled and manual runs alike. lock_timeout is the wait for a lock of
-- everything a step does (see sweep_batch, remove_partition).
--
-- Deferred constraints (DEFERRABLE INITIALLY DEFERRED foreign keys, as Django
-- declares them, deferred constraint triggers) are checked at the end of each
-- statement instead of at the batch's COMMIT: run_job's COMMIT cannot sit in
-- an exception handler, so a violation there would end the CALL with the run
-- left "running" and its error lost; raised here, it is the run's error.
CREATE FUNCTION @schema@.delete_batch(run_id bigint)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
SET lock_timeout = '@lock_timeout@'
AS $$
DECLARE
    r @schema@.run;
    j @schema@.job;
BEGIN
    SELECT * INTO STRICT r FROM @schema@.run WHERE id = run_id;
    SELECT * INTO STRICT j FROM @schema@.job WHERE name = r.job;
    IF r.removable IS NULL THEN
        -- The run's first step: the partitions lying wholly past retention.
        IF j.max_replica_lag IS NOT NULL THEN
            PERFORM @schema@.replica_lag_readable();
        END IF;
        UPDATE @schema@.run SET removable = @schema@.removable_partitions(j, r.cutoff) WHERE id = run_id;
        RETURN 0;
    END IF;
    IF cardinality(r.removable) > 0 THEN
        RETURN @schema@.remove_partition(run_id);
    END IF;
    IF r.target IS NULL THEN
        -- Not started (no strategy yet), or done.
        RETURN CASE WHEN r.strategy IS NULL AND @schema@.next_target(run_id, 0) THEN 0 END;
    END IF;
    SET CONSTRAINTS ALL IMMEDIATE;
    IF r.strategy = 'sweep' THEN
        RETURN @schema@.sweep_batch(r, j);
    END IF;
    RETURN @schema@.index_batch(r, j);
END
$$;


-- ===========================================================================
-- Partitions removed whole
-- ===========================================================================

-- The partitions of a job's table that lie wholly past retention, outermost
-- first (a partition that goes takes its own sub-partitions with it).
CREATE FUNCTION @schema@.removable_partitions(j @schema@.job, cutoff timestamptz)
RETURNS oid[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part   record;
    chosen oid[] := '{}';
BEGIN
    IF j.partitions = 'delete' OR j.predicate IS NOT NULL THEN
        RETURN chosen;
    END IF;
    FOR part IN
        SELECT t.relid FROM pg_partition_tree(format('%I.%I', j.table_schema, j.table_name)::regclass) t
         WHERE t.level > 0 ORDER BY t.level, t.relid
    LOOP
        CONTINUE WHEN EXISTS (SELECT FROM pg_partition_ancestors(part.relid) a
                               WHERE a.relid::oid = ANY(chosen));
        IF @schema@.partition_expired(j, part.relid, cutoff) THEN
            chosen := chosen || part.relid::oid;
        END IF;
    END LOOP;
    RETURN chosen;
END
$$;


-- Whether every row of a partition is expired by its bounds alone, so that
-- the partition can go whole: for some expiry column c, the partition's
-- constraint (its bounds and its ancestors') refutes "c >= cutoff OR c IS
-- NULL". The planner decides, with constraint exclusion: the same proof that
-- lets it skip the partition in a query, so no bound is parsed here. Never a
-- default partition (it holds the rows no bound covers, NULLs included), and
-- never with a `where` predicate, which bounds cannot prove.
CREATE FUNCTION @schema@.partition_expired(j @schema@.job, part regclass, cutoff timestamptz)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
SET constraint_exclusion = 'on'
AS $$
DECLARE
    col      name;
    col_type text;
    bound    text;
    plan     json;
BEGIN
    IF j.predicate IS NOT NULL
       OR (SELECT c.relkind NOT IN ('r', 'p') OR pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'
             FROM pg_class c WHERE c.oid = part)
    THEN
        RETURN false;
    END IF;
    -- A partitioned partition without partitions plans as empty whatever the
    -- query: that proves nothing about its bounds.
    EXECUTE format('EXPLAIN (FORMAT JSON, COSTS OFF) SELECT FROM %s', part) INTO plan;
    IF plan -> 0 -> 'Plan' ->> 'Node Type' = 'Result' AND plan -> 0 -> 'Plan' -> 'Plans' IS NULL THEN
        RETURN false;
    END IF;
    FOREACH col IN ARRAY j.expires LOOP
        SELECT format_type(a.atttypid, NULL) INTO col_type
          FROM pg_attribute a WHERE a.attrelid = part AND a.attname = col AND NOT a.attisdropped;
        -- The cutoff in the column's own type, so that the comparison is
        -- immutable and the planner may use it in a proof (for a date column
        -- it rounds down: a partition ending on the cutoff's day waits a day).
        EXECUTE format('SELECT $1::%s::text', col_type) INTO bound USING cutoff;
        EXECUTE format('EXPLAIN (FORMAT JSON, COSTS OFF) SELECT FROM %s WHERE %I >= %L::%s OR %I IS NULL',
                       part, col, bound, col_type, col)
           INTO plan;
        IF plan -> 0 -> 'Plan' ->> 'Node Type' = 'Result'
           AND plan -> 0 -> 'Plan' ->> 'One-Time Filter' = 'false'
           AND plan -> 0 -> 'Plan' -> 'Plans' IS NULL
        THEN
            RETURN true;
        END IF;
    END LOOP;
    RETURN false;
END
$$;


-- Drops (or detaches) the next partition of the run's list; returns the rows
-- it held, as the statistics know them. Its parent is locked against
-- ATTACH/DETACH (not against the application's reads and writes) while the
-- bounds are checked again; DROP or DETACH then needs an ACCESS EXCLUSIVE
-- lock on the parent for a moment: lock_timeout keeps that wait short, and a
-- partition that cannot be had (a lock, a view or foreign key depending on
-- it, a missing privilege) is left where it is: its rows are deleted in
-- batches like any others.
CREATE FUNCTION @schema@.remove_partition(run_id bigint)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
SET lock_timeout = '@lock_timeout@'
AS $$
DECLARE
    r      @schema@.run;
    j      @schema@.job;
    part   regclass;
    parent regclass;
    leaf   record;
    n      bigint := 0;
    tree   regclass[];  -- the partition and its own partitions, moving to the archive's schema
    moving regclass;
BEGIN
    SELECT * INTO STRICT r FROM @schema@.run WHERE id = run_id;
    SELECT * INTO STRICT j FROM @schema@.job WHERE name = r.job;
    UPDATE @schema@.run SET removable = removable[2:] WHERE id = run_id;
    SELECT i.inhrelid, i.inhparent INTO part, parent FROM pg_inherits i WHERE i.inhrelid = r.removable[1];
    IF part IS NULL THEN
        RETURN 0;  -- gone, or no longer a partition
    END IF;
    BEGIN
        EXECUTE format('LOCK TABLE %s IN SHARE UPDATE EXCLUSIVE MODE', parent);
        IF NOT @schema@.partition_expired(j, part, r.cutoff) THEN
            RETURN 0;
        END IF;
        -- Only a partition never vacuumed nor analyzed (reltuples -1) is counted.
        FOR leaf IN
            SELECT t.relid, c.reltuples FROM pg_partition_tree(part) t JOIN pg_class c ON c.oid = t.relid
             WHERE t.isleaf
        LOOP
            IF leaf.reltuples >= 0 THEN
                n := n + leaf.reltuples::bigint;
            ELSE
                EXECUTE format('SELECT %s + count(*) FROM %s', n, leaf.relid) INTO n;
            END IF;
        END LOOP;
        IF j.archive IS NOT NULL THEN
            -- Kept: detached, and moved with its own partitions into the
            -- archive's schema (a name taken there keeps it where it is).
            tree := ARRAY(SELECT t.relid FROM pg_partition_tree(part) t ORDER BY t.level DESC);
            EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', parent, part);
            FOREACH moving IN ARRAY tree LOOP
                EXECUTE format('ALTER TABLE %s SET SCHEMA %I', moving, (parse_ident(j.archive))[1]);
            END LOOP;
        ELSIF j.partitions = 'detach' THEN
            EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', parent, part);
        ELSE
            EXECUTE format('DROP TABLE %s', part);
        END IF;
    EXCEPTION WHEN lock_not_available OR dependent_objects_still_exist OR insufficient_privilege
                   OR object_in_use OR foreign_key_violation OR duplicate_table THEN
        RAISE NOTICE 'dbjobs: partition % stays (%); its rows are deleted in batches', part, SQLERRM;
        RETURN 0;
    END;
    UPDATE @schema@.run
       SET partition_rows = partition_rows + n, partitions_removed = partitions_removed + 1
     WHERE id = run_id;
    RETURN n;
END
$$;


-- ===========================================================================
-- The relations a run cleans, and how
-- ===========================================================================

-- Points the run at the next relation whose rows it deletes (the table itself,
-- or the next leaf partition after `after`) and chooses how. Returns false
-- when there is none left.
--
-- How: when a large share of the relation is expired (sweep_share of its
-- rows, by the planner's estimate), sweeping it in physical order (a TID range
-- scan per batch of pages, PostgreSQL 14+, see sweep_batch) visits each page
-- once, as the single DELETE would, at the same speed; batches picked through
-- the indexes would visit scattered pages again and again. When a small share
-- is expired, index-driven batches (index_batch) read far less. The planner's
-- estimate decides, as it does for a single DELETE.
--
-- It also refuses a relation whose row-level security hides every row from
-- the role running the job (install refuses it too, but a policy can be
-- dropped later): without it, every run would "succeed" deleting nothing.
-- And it lists the tables the relation's deletes cascade into, whose deleted
-- rows each batch counts.
CREATE FUNCTION @schema@.next_target(run_id bigint, after oid)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    r        @schema@.run;
    j        @schema@.job;
    root     regclass;
    leaf     regclass;
    expired  float8;
    tuples   float8;
    pages    bigint;
    how      text;
    first_pages integer;
    hidden   text;
    children oid[];
BEGIN
    SELECT * INTO STRICT r FROM @schema@.run WHERE id = run_id;
    SELECT * INTO STRICT j FROM @schema@.job WHERE name = r.job;
    root := format('%I.%I', j.table_schema, j.table_name)::regclass;
    SELECT l.relid INTO leaf
      FROM (SELECT root AS relid  -- a table that is not partitioned is its own only leaf
             WHERE NOT EXISTS (SELECT FROM pg_partitioned_table p WHERE p.partrelid = root)
            UNION ALL
            SELECT t.relid FROM pg_partition_tree(root) t WHERE t.isleaf) l
     WHERE l.relid::oid > after
     ORDER BY l.relid::oid LIMIT 1;
    IF leaf IS NULL THEN
        -- Done. strategy keeps the way the last relation was cleaned.
        UPDATE @schema@.run SET target = NULL, strategy = coalesce(strategy, 'none') WHERE id = run_id;
        RETURN false;
    END IF;

    -- Row-level security that applies to this role here (it is not the owner,
    -- or the table forces it; not a superuser nor BYPASSRLS: the server's own
    -- row_security_active() decides), with no permissive policy for one of
    -- the commands a batch needs (SELECT and DELETE, and UPDATE for the row
    -- locks of FOR UPDATE SKIP LOCKED): default-deny, no row could be deleted.
    -- A policy without USING grants nothing either. Policies that exist but
    -- hide some rows cannot be told from rows that are not there: doctor warns
    -- about them. The same check as catalog.row_security.
    IF row_security_active(leaf) THEN
        SELECT string_agg(v.cmd, ', ' ORDER BY v.n) INTO hidden
          FROM (VALUES (1, 'r', 'SELECT'), (2, 'w', 'UPDATE'), (3, 'd', 'DELETE')) AS v(n, code, cmd)
         WHERE NOT EXISTS (
                 SELECT FROM pg_policy p
                  WHERE p.polrelid = leaf AND p.polpermissive AND p.polqual IS NOT NULL
                    AND p.polcmd IN ('*', v.code)
                    AND EXISTS (SELECT FROM unnest(p.polroles) AS g(role)
                                 WHERE CASE WHEN g.role = 0 THEN true  -- PUBLIC
                                            ELSE pg_has_role(current_user, g.role, 'MEMBER') END));
        IF hidden IS NOT NULL THEN
            RAISE EXCEPTION 'row-level security on % hides every row from role %: no policy lets it %',
                            leaf, quote_ident(current_user), hidden
                USING ERRCODE = 'insufficient_privilege',
                      HINT = format('CREATE POLICY dbjobs_cleanup ON %s TO %I USING (true), '
                                    'or ALTER ROLE %I BYPASSRLS, or run dbjobs as the table''s owner%s',
                                    leaf, current_user, current_user,
                                    CASE WHEN (SELECT c.relforcerowsecurity FROM pg_class c WHERE c.oid = leaf)
                                         THEN format(' with ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', leaf)
                                         ELSE '' END);
        END IF;
    END IF;

    -- Where deletes cascade: the referencing tables of ON DELETE CASCADE
    -- foreign keys, and theirs in turn (leaf partitions for a partitioned
    -- one: the statistics are kept per leaf). The relation itself is left out:
    -- a cascade within it is not told from the batch's own deletes.
    WITH RECURSIVE chain(relid) AS (
        SELECT leaf::oid
        UNION
        SELECT c.conrelid FROM chain JOIN pg_constraint c ON c.confrelid = chain.relid
         WHERE c.contype = 'f' AND c.confdeltype = 'c'
    )
    SELECT array_agg(DISTINCT l.relid ORDER BY l.relid) INTO children
      FROM chain,
           LATERAL (SELECT chain.relid
                     WHERE NOT EXISTS (SELECT FROM pg_partitioned_table p WHERE p.partrelid = chain.relid)
                    UNION ALL
                    SELECT t.relid::oid FROM pg_partition_tree(chain.relid) t WHERE t.isleaf) AS l(relid)
     WHERE l.relid <> leaf::oid;

    expired := @schema@.expired_estimate(j, leaf::text, r.cutoff);
    SELECT c.reltuples, pg_relation_size(c.oid) / current_setting('block_size')::bigint
      INTO tuples, pages
      FROM pg_class c WHERE c.oid = leaf;
    how := CASE WHEN current_setting('server_version_num')::int >= 140000
                      AND tuples > 0 AND expired >= @sweep_share@ * tuples
                     THEN 'sweep' ELSE 'index' END;
    first_pages := least(greatest(ceil(j.batch_size * pages / greatest(tuples, 1)), 1), @sweep_pages_max@);

    UPDATE @schema@.run
       SET target = leaf, strategy = how,
           sweep_next = CASE WHEN how = 'sweep' THEN 0 END,
           sweep_end = CASE WHEN how = 'sweep' THEN pages END,
           -- The first batch covers the pages that hold batch_size rows in all,
           -- as if every row were expired; each batch then sizes the next one
           -- from the expired rows it met (see sweep_batch), up to sweep_growth
           -- times that: expired rows are rarely spread evenly (the oldest rows
           -- fill the first pages), and a batch must stay short wherever it lands.
           pages_per_batch = CASE WHEN how = 'sweep' THEN first_pages END,
           pages_max = CASE WHEN how = 'sweep' THEN least(@sweep_growth@ * first_pages, @sweep_pages_max@) END,
           keyset_column = CASE WHEN how = 'index' THEN 1 END,
           keyset_from = CASE WHEN how = 'index' THEN timestamptz '-infinity' END,
           cascade_tables = children
     WHERE id = run_id;
    RETURN true;
END
$$;


-- The planner's estimate of the rows of relation `rel` (its name, quoted as
-- needed) that a job's rule matches at `cutoff`: start_run reports it, and
-- next_target chooses how to delete from it. NULL when the planner cannot
-- tell (the relation is gone, the predicate fails): the first batch will fail
-- the same way, and be recorded.
CREATE FUNCTION @schema@.expired_estimate(j @schema@.job, rel text, cutoff timestamptz)
RETURNS float8
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
DECLARE
    plan json;
BEGIN
    -- The predicate's names resolve as in every batch (see expired_rule).
    PERFORM set_config('search_path', format('pg_catalog, %I, pg_temp', j.table_schema), true);
    EXECUTE format('EXPLAIN (FORMAT JSON) SELECT 1 FROM %s WHERE %s', rel, @schema@.expired_rule(j))
       INTO plan USING cutoff;
    RETURN (plan -> 0 -> 'Plan' ->> 'Plan Rows')::float8;
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END
$$;


-- What a run of the job would do now, without doing it (`dbjobs run --dry-run`):
-- the rows its rule matches, counted exactly (partitions it would remove
-- included), the range of their expiry times (each row's earliest expiry
-- column, as the rule reads it), and the partitions it would drop or detach.
-- Reads only; the caller's transaction is rolled back.
CREATE FUNCTION @schema@.dry_run(job_name text)
RETURNS TABLE (rows_matched bigint, oldest timestamptz, newest timestamptz, partitions text[],
               partitions_mode text, cutoff timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
#variable_conflict use_column
DECLARE
    j        @schema@.job;
    at       timestamptz;
    removable oid[];
BEGIN
    SELECT * INTO j FROM @schema@.job WHERE name = job_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'dbjobs: unknown job "%"', job_name
            USING ERRCODE = 'undefined_object', HINT = 'Run `dbjobs install` to register it.';
    END IF;
    at := now() - j.retain;
    removable := @schema@.removable_partitions(j, at);
    -- The predicate's names resolve as in every batch (see expired_rule).
    PERFORM set_config('search_path', format('pg_catalog, %I, pg_temp', j.table_schema), true);
    RETURN QUERY EXECUTE format(
        'SELECT count(*), min(e), max(e), $2, $3, $1 FROM ('
        '    SELECT least(%s) AS e FROM %I.%I WHERE %s'
        ') t',
        -- A row expires at the earliest of its expiry columns that is not NULL.
        (SELECT string_agg(format('%I::timestamptz', c), ', ') FROM unnest(j.expires) AS c),
        j.table_schema, j.table_name, @schema@.expired_rule(j))
    USING at,
          ARRAY(SELECT r::regclass::text FROM unnest(removable) AS r),
          CASE WHEN cardinality(removable) > 0 THEN CASE WHEN j.archive IS NOT NULL THEN 'archive'
                                                         ELSE j.partitions END END;
END
$$;


-- ===========================================================================
-- One batch
-- ===========================================================================

-- A physical sweep's batch: deletes the rule's rows in the run's next
-- pages_per_batch pages of its relation (a TID range scan), then sizes the
-- next batch. Returns the rows deleted; 0 after pointing the run at its next
-- relation, NULL when there is none.
--
-- lock_timeout keeps a batch from waiting on rows the application holds: the
-- batch that hits one is rolled back (its subtransaction) and done again with
-- SKIP LOCKED, so only that batch pays for row locks, and the held rows are
-- left to a later run. When that times out too, a row that deleting them
-- needs is held elsewhere: delete_held deletes what it can.
CREATE FUNCTION @schema@.sweep_batch(r @schema@.run, j @schema@.job)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
SET lock_timeout = '@lock_timeout@'
AS $$
DECLARE
    rule     text := @schema@.expired_rule(j);
    path     text := format('pg_catalog, %I, pg_temp', j.table_schema);  -- see expired_rule
    lo       tid := format('(%s,0)', r.sweep_next)::tid;
    hi       tid := format('(%s,0)', r.sweep_next + r.pages_per_batch)::tid;
    started  timestamptz := clock_timestamp();
    deleted  bigint := 0;
    skipped  bigint := 0;
    moved    bigint[];  -- the rows deleted by cascade, per table of r.cascade_tables
    met_lock boolean := false;
    held     tid[];     -- the batch's rows, locked, when deleting them needs another lock
BEGIN
    IF r.sweep_next >= r.sweep_end THEN
        RETURN CASE WHEN @schema@.next_target(r.id, r.target) THEN 0 END;
    END IF;
    BEGIN
        SELECT c.deleted, c.moved INTO deleted, moved
          FROM @schema@.delete_counted(
                   @schema@.moved_rows(format('DELETE FROM %1$s WHERE ctid >= $2 AND ctid < $3 AND %2$s',
                                              r.target::regclass, rule), r.target::regclass, j.archive),
                   path, r.cutoff, lo, hi, NULL, r.cascade_tables, NULL) AS c;
    EXCEPTION WHEN lock_not_available THEN
        met_lock := true;
        BEGIN
            SELECT c.deleted, c.moved INTO deleted, moved
              FROM @schema@.delete_counted(
                       @schema@.moved_rows(
                           format('DELETE FROM %1$s WHERE ctid = ANY(ARRAY('
                                  '    SELECT ctid FROM %1$s WHERE ctid >= $2 AND ctid < $3 AND %2$s FOR UPDATE SKIP LOCKED'
                                  ')) AND %2$s',
                                  r.target::regclass, rule),
                           r.target::regclass, j.archive),
                       path, r.cutoff, lo, hi, NULL, r.cascade_tables, NULL) AS c;
        EXCEPTION WHEN lock_not_available THEN
            -- Not a row of this table (those were skipped): one that
            -- deleting them needs. Lock the batch's rows, then delete_held.
            PERFORM set_config('search_path', path, true);
            EXECUTE format(
                'SELECT array_agg(ctid) FROM ('
                '    SELECT ctid FROM %1$s WHERE ctid >= $2 AND ctid < $3 AND %2$s FOR UPDATE SKIP LOCKED'
                ') AS p',
                r.target::regclass, rule)
            INTO held USING r.cutoff, lo, hi;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        END;
    END;
    IF held IS NOT NULL THEN
        SELECT h.deleted, h.moved INTO deleted, moved
          FROM @schema@.delete_held(r.target::regclass, rule, path, r.cutoff, held, r.cascade_tables,
                                   j.archive) AS h;
    END IF;
    IF met_lock THEN
        -- What this batch's pages still hold of the rule's rows: the rows
        -- held by the application, and those whose delete timed out.
        PERFORM set_config('search_path', path, true);
        EXECUTE format('SELECT count(*) FROM %1$s WHERE ctid >= $2 AND ctid < $3 AND %2$s',
                       r.target::regclass, rule)
           INTO skipped USING r.cutoff, lo, hi;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END IF;

    -- The next batch: the pages that would hold batch_size expired rows at
    -- this batch's density (at most sweep_resize_max or sweep_resize_min
    -- times these), within pages_max; half of these after a batch slower
    -- than slow_batch.
    UPDATE @schema@.run
       SET rows_deleted = rows_deleted + deleted, sweep_next = sweep_next + pages_per_batch,
           largest_batch = greatest(largest_batch, deleted),
           pages_per_batch = least(greatest(1, CASE
               WHEN clock_timestamp() - started > interval '@slow_batch@' THEN pages_per_batch / 2
               ELSE round(pages_per_batch * least(@sweep_resize_max@,
                                                  greatest(@sweep_resize_min@,
                                                           j.batch_size::float8 / greatest(deleted, 1))))
           END), pages_max)
     WHERE id = r.id;
    PERFORM @schema@.count_batch(r, skipped, moved);
    RETURN deleted;
END
$$;


-- An index-driven batch, one expiry column c at a time: the next batch_size
-- rows in c's order from where the previous batch stopped (keyset), so that
-- no batch walks again over the index entries of rows already deleted. Rows
-- the application holds are skipped (SKIP LOCKED) and left to a later run;
-- the rule is checked again on the rows actually deleted. A row that expired
-- through another column is found in that column's turn. Returns the rows
-- deleted; 0 after moving on to the next column or relation, NULL when there
-- is none. lock_timeout: as in sweep_batch.
CREATE FUNCTION @schema@.index_batch(r @schema@.run, j @schema@.job)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
SET lock_timeout = '@lock_timeout@'
AS $$
DECLARE
    rule     text := @schema@.expired_rule(j);
    path     text := format('pg_catalog, %I, pg_temp', j.table_schema);  -- see expired_rule
    col      name := j.expires[r.keyset_column];
    deleted  bigint := 0;
    skipped  bigint := 0;
    last_key timestamptz;  -- the last value of c the batch picked
    seen     bigint[];
    moved    bigint[];  -- the rows deleted by cascade, per table of r.cascade_tables
    held     tid[];     -- the batch's rows, locked, when deleting them needs another lock
BEGIN
    BEGIN
        IF r.cascade_tables IS NOT NULL THEN
            seen := @schema@.cascade_counts(r.cascade_tables);
        END IF;
        PERFORM set_config('search_path', path, true);
        EXECUTE format(
            'WITH picked AS MATERIALIZED ('
            '    SELECT ctid, %3$I AS k FROM %1$s WHERE %3$I < $1 AND %3$I >= $2 AND %2$s'
            '     ORDER BY %3$I LIMIT %4$s FOR UPDATE SKIP LOCKED'
            '), gone AS ('
            '    DELETE FROM %1$s WHERE ctid = ANY(ARRAY(SELECT ctid FROM picked)) AND %2$s RETURNING %5$s'
            ')%6$s SELECT (SELECT count(*) FROM gone), (SELECT max(k) FROM picked)',
            r.target::regclass, rule, col, j.batch_size,
            -- With an archive, the rows move (see moved_rows): a data-modifying
            -- CTE runs whether or not the query reads it.
            CASE WHEN j.archive IS NULL THEN '1' ELSE '*' END,
            CASE WHEN j.archive IS NOT NULL
                 THEN format(', kept AS (%s)', @schema@.archive_insert(r.target::regclass, j.archive)) ELSE '' END)
        INTO deleted, last_key USING r.cutoff, r.keyset_from;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        IF r.cascade_tables IS NOT NULL THEN
            moved := @schema@.cascaded_since(r.cascade_tables, seen, moved);
        END IF;
    EXCEPTION WHEN lock_not_available THEN
        -- The picked rows were locked: a row their delete needs was not.
        PERFORM set_config('search_path', path, true);
        EXECUTE format(
            'SELECT array_agg(ctid), max(k) FROM ('
            '    SELECT ctid, %3$I AS k FROM %1$s WHERE %3$I < $1 AND %3$I >= $2 AND %2$s'
            '     ORDER BY %3$I LIMIT %4$s FOR UPDATE SKIP LOCKED'
            ') AS p',
            r.target::regclass, rule, col, j.batch_size)
        INTO held, last_key USING r.cutoff, r.keyset_from;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END;
    IF held IS NOT NULL THEN
        SELECT h.deleted, h.moved, h.skipped INTO deleted, moved, skipped
          FROM @schema@.delete_held(r.target::regclass, rule, path, r.cutoff, held, r.cascade_tables,
                                   j.archive) AS h;
    END IF;

    IF last_key IS NULL THEN
        -- Nothing left to pick in this column: the next one, or the next relation.
        IF r.keyset_column < cardinality(j.expires) THEN
            UPDATE @schema@.run SET keyset_column = keyset_column + 1, keyset_from = '-infinity'
             WHERE id = r.id;
            RETURN 0;
        END IF;
        RETURN CASE WHEN @schema@.next_target(r.id, r.target) THEN 0 END;
    END IF;
    UPDATE @schema@.run
       SET rows_deleted = rows_deleted + deleted,
           -- Past rows just skipped, strictly: picked again, they would be
           -- waited for again (rows sharing that last value that the batch
           -- did not reach wait for a later run too).
           keyset_from = CASE WHEN skipped > 0 THEN last_key + interval '1 microsecond' ELSE last_key END,
           largest_batch = greatest(largest_batch, deleted)
     WHERE id = r.id;
    PERFORM @schema@.count_batch(r, skipped, moved);
    RETURN deleted;
END
$$;


-- Archive before delete (see moved_rows below): the INSERT of the rows of
-- CTE "gone", deleted from `rel`, into `archive`, column by column by name.
CREATE FUNCTION @schema@.archive_insert(rel regclass, archive text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('INSERT INTO %1$s (%2$s) SELECT %2$s FROM gone', archive::regclass,
                  string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum))
      FROM pg_attribute a
     WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
$$;


-- Archive before delete (job.archive): the statement that moves the rows a
-- DELETE of relation `rel` deletes into `archive` instead, in the same
-- statement, WITH gone AS (<delete> RETURNING *) INSERT INTO <archive> ...;
-- the statement unchanged when there is no archive. One statement, so one
-- transaction: a batch's rows are in the archive exactly when they are gone
-- from the table, whatever ends the run (a kill, a crash: the batch is
-- undone whole). Its row count is the rows moved. Columns go by name (a
-- leaf partition's order may differ); install checked that they fit, and a
-- column added to the table since makes every batch fail, deleting nothing,
-- until the archive has it too. Rows deleted by an ON DELETE CASCADE are
-- not archived.
CREATE FUNCTION @schema@.moved_rows(statement text, rel regclass, archive text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN archive IS NULL THEN statement
                ELSE format('WITH gone AS (%s RETURNING *) %s', statement, @schema@.archive_insert(rel, archive)) END
$$;

-- A batch's rows, locked by it, whose delete needs a lock on another row that
-- someone else holds. SKIP LOCKED skips rows of the job's own table only:
-- when deleting a row needs a row the application holds elsewhere (a child
-- row an ON DELETE CASCADE deletes, a row a trigger updates, a key a NO ACTION
-- check locks), the batch and its SKIP LOCKED retry time out. The rows are
-- then deleted held_chunk at a time, and a chunk that times out one row at a
-- time, each in its own subtransaction; the rows whose delete still times out
-- are left to a later run and counted in run.rows_skipped. Chunks keep the
-- number of subtransactions (and of waits) small when few rows are blocked.
-- Those waits are bounded: held_lock_timeout each, past the two lock_timeout
-- waits that showed something is held for longer than a moment, and
-- held_waits of them at most per batch, after which the batch's remaining
-- rows are left too. A batch that could delete none of its rows that way
-- fails the run, which would otherwise "succeed" skipping everything.
--
-- Returns the rows deleted, those left, and the rows deleted by cascade per
-- table of `counted`.
CREATE FUNCTION @schema@.delete_held(rel regclass, rule text, path text, cutoff timestamptz, held tid[],
                                     counted oid[], archive text,
                                     OUT deleted bigint, OUT skipped bigint, OUT moved bigint[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
SET lock_timeout = '@held_lock_timeout@'
AS $$
DECLARE
    chunk tid[];
    one   tid;
    got   bigint;
    waits integer := 0;
    i     integer := 1;
BEGIN
    deleted := 0;
    WHILE i <= cardinality(held) AND waits < @held_waits@ LOOP
        chunk := held[i:i + @held_chunk@ - 1];
        BEGIN
            SELECT c.deleted, c.moved INTO got, moved
              FROM @schema@.delete_counted(
                       @schema@.moved_rows(format('DELETE FROM %1$s WHERE ctid = ANY($4) AND %2$s', rel, rule),
                                           rel, archive),
                       path, cutoff, NULL, NULL, chunk, counted, moved) AS c;
            deleted := deleted + got;
        EXCEPTION WHEN lock_not_available THEN
            waits := waits + 1;
            FOREACH one IN ARRAY chunk LOOP
                EXIT WHEN waits >= @held_waits@;
                BEGIN
                    SELECT c.deleted, c.moved INTO got, moved
                      FROM @schema@.delete_counted(
                               @schema@.moved_rows(format('DELETE FROM %1$s WHERE ctid = ANY($4) AND %2$s',
                                                          rel, rule), rel, archive),
                               path, cutoff, NULL, NULL, ARRAY[one], counted, moved) AS c;
                    deleted := deleted + got;
                EXCEPTION WHEN lock_not_available THEN
                    waits := waits + 1;  -- left to a later run
                END;
            END LOOP;
        END;
        i := i + @held_chunk@;
    END LOOP;
    skipped := cardinality(held) - deleted;
    -- Nothing at all could be deleted before the waits ran out: not a few
    -- rows the application holds for a while but something in the way of
    -- every row (a lock on a whole table the delete cascades to, say). A run
    -- that went on would "succeed" skipping everything: fail it.
    IF deleted = 0 AND waits >= @held_waits@ THEN
        RAISE EXCEPTION 'could not delete any of a batch''s % rows: each waited for a lock held by another session',
                        cardinality(held)
            USING ERRCODE = 'lock_not_available',
                  DETAIL = 'On a row or table that deleting them cascades to or that a trigger touches.',
                  HINT = 'pg_locks shows who holds it; the next run tries again.';
    END IF;
END
$$;


-- Runs one DELETE statement of a batch: `statement` with the predicate's
-- search_path (see expired_rule), $1 the cutoff and $2, $3 (a page range) or
-- $4 (ctids) as it needs. Returns the rows it deleted, and `moved` plus the
-- rows it deleted by cascade from each table of `counted` (see
-- cascade_counts). An error is left to the caller, whose subtransaction
-- undoes the statement.
CREATE FUNCTION @schema@.delete_counted(statement text, path text, cutoff timestamptz, lo tid, hi tid,
                                        ctids tid[], counted oid[], INOUT moved bigint[], OUT deleted bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    seen bigint[];
BEGIN
    IF counted IS NOT NULL THEN
        seen := @schema@.cascade_counts(counted);
    END IF;
    PERFORM set_config('search_path', path, true);
    EXECUTE statement USING cutoff, lo, hi, ctids;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF counted IS NOT NULL THEN
        moved := @schema@.cascaded_since(counted, seen, moved);
    END IF;
END
$$;


-- The rows deleted by cascade are counted exactly, at the cost of a lookup in
-- this backend's memory per table: the transaction's deleted-row counter of
-- each table of run.cascade_tables (listed by next_target), read before and
-- after each statement that succeeded. A subtransaction rolled back still
-- adds its attempted deletes there, so a failed statement's reading is never
-- used. Rows a trigger deletes elsewhere are not counted.
--
-- The counters of `counted`, in its order, read before a statement.
CREATE FUNCTION @schema@.cascade_counts(counted oid[])
RETURNS bigint[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN ARRAY(SELECT pg_stat_get_xact_tuples_deleted(u.t)
                   FROM unnest(counted) WITH ORDINALITY AS u(t, n) ORDER BY u.n);
END
$$;

-- After the statement: `moved` (NULL: zeros) plus what each table lost since
-- `seen`.
CREATE FUNCTION @schema@.cascaded_since(counted oid[], seen bigint[], moved bigint[])
RETURNS bigint[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN ARRAY(SELECT coalesce(moved[u.n], 0) + pg_stat_get_xact_tuples_deleted(u.t) - seen[u.n]
                   FROM unnest(counted) WITH ORDINALITY AS u(t, n) ORDER BY u.n);
END
$$;


-- Adds a batch's rows left for a later run and its rows deleted by cascade
-- (`moved`, per table of r.cascade_tables; NULL: none) to the run's totals:
-- cascaded_rows is {"schema.table": rows}, NULL while nothing cascades.
CREATE FUNCTION @schema@.count_batch(r @schema@.run, skipped bigint, moved bigint[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    counting boolean := coalesce(cardinality(r.cascade_tables), 0) > 0;
BEGIN
    IF counting OR skipped > 0 THEN
        UPDATE @schema@.run
           SET rows_skipped = rows_skipped + skipped,
               cascaded_rows = CASE WHEN counting THEN (
                   SELECT jsonb_object_agg(x.name, x.total)
                     FROM (SELECT e.name, sum(e.n) AS total
                             FROM (SELECT k.key, k.value::bigint
                                     FROM jsonb_each_text(coalesce(cascaded_rows, '{}')) AS k
                                   UNION ALL
                                   SELECT format('%I.%I', ns.nspname, c.relname), coalesce(m.n, 0)
                                     FROM unnest(r.cascade_tables, moved) AS m(t, n)
                                     JOIN pg_class c ON c.oid = m.t
                                     JOIN pg_namespace ns ON ns.oid = c.relnamespace) AS e(name, n)
                            GROUP BY e.name) AS x)
                   ELSE cascaded_rows END
         WHERE id = r.id;
    END IF;
END
$$;


-- ===========================================================================
-- Retries
-- ===========================================================================

-- The jobs with retry_after whose latest finished run failed, and when each
-- is to run again: that run's end plus retry_after * 2^(failures - 1), where
-- failures counts the failed runs since the job's latest success or partial
-- run (as status's consecutive_failures, up to 1000). A job is left out when
-- that comes later than a minute before one period (retry_cap, the shortest
-- time between two fire times of its schedule, computed by install) after
-- the failed run's minute: its schedule fires first, and the scheduled run is
-- the retry (the retry job, once a minute, would meet it in the same minute).
-- So the backoff is capped by the period, retries stop within each period,
-- and a job scheduled every minute is never retried. Whether a run of the job
-- is going is for retry_due to see.
CREATE FUNCTION @schema@.retries()
RETURNS TABLE (name text, failures bigint, failed_at timestamptz, retry_at timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
-- The planner's cost for the count of failures (up to 1000 probes) passes
-- jit_above_cost, and compiling the query took 300 ms of a call that
-- otherwise takes a fraction of a millisecond, every minute.
SET jit = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT j.name, f.n, last.finished_at, last.finished_at + make_interval(secs => d.seconds)
      FROM @schema@.job j
      CROSS JOIN LATERAL (
            SELECT r.started_at, r.finished_at, r.status
              FROM @schema@.run r
             WHERE r.job = j.name AND r.status IN ('succeeded', 'failed', 'partial')
             ORDER BY r.id DESC LIMIT 1) last
      -- Each one probe of a partial index, as in status_history.
      LEFT JOIN LATERAL (
            SELECT r.id FROM @schema@.run r
             WHERE r.job = j.name AND r.status = 'succeeded'
             ORDER BY r.id DESC LIMIT 1) success ON true
      LEFT JOIN LATERAL (
            SELECT r.id FROM @schema@.run r
             WHERE r.job = j.name AND r.status = 'partial'
             ORDER BY r.id DESC LIMIT 1) part ON true
      CROSS JOIN LATERAL (
            SELECT greatest(count(*), 1) AS n FROM (
                SELECT FROM @schema@.run r
                 WHERE r.job = j.name AND r.status = 'failed'
                   AND r.id > greatest(success.id, part.id, 0)
                 LIMIT 1000) x) f
      -- In seconds, as a double: retry_after doubled hundreds of times is no interval.
      CROSS JOIN LATERAL (
            SELECT extract(epoch FROM j.retry_after)::float8 * 2 ^ least(f.n - 1, 100) AS seconds,
                   extract(epoch FROM date_trunc('minute', last.started_at) + j.retry_cap
                                      - interval '1 minute' - last.finished_at)::float8 AS before_next) d
     WHERE j.retry_after IS NOT NULL AND j.retry_cap IS NOT NULL
       AND last.status = 'failed'
       AND d.seconds <= d.before_next;
END
$$;


-- What dbjobs' retry job runs every minute: `CALL @schema@.retry_due()`. Each
-- job whose retry is due (see retries), the earliest first, is run by run_job
-- with trigger 'retry', unless a run of it is going: its lock is held, and
-- the job is passed over without recording a skipped run. A retry that fails
-- fails this CALL as run_job does (pg_cron's history says so), and the jobs
-- after it wait for the next minute: run_job COMMITs, so it cannot be called
-- inside a block that catches its error (a subtransaction).
--
-- No SET clause: a nested CALL may COMMIT only when no routine of the call
-- chain has one. It calls only schema-qualified routines.
CREATE PROCEDURE @schema@.retry_due()
LANGUAGE plpgsql
AS $$
DECLARE
    due text[] := ARRAY(SELECT r.name FROM @schema@.retries() r
                         WHERE r.retry_at <= pg_catalog.now() + interval '@retry_early@'
                         ORDER BY r.retry_at, r.name);
    job_name text;
    run_id bigint;  -- run_job's INOUT argument, which a CALL in PL/pgSQL must give a variable
BEGIN
    FOREACH job_name IN ARRAY due LOOP
        -- Still due? A retry before it took time, in which its own schedule may have run it.
        CONTINUE WHEN NOT EXISTS (SELECT FROM @schema@.retries() r
                                   WHERE r.name = job_name
                                     AND r.retry_at <= pg_catalog.clock_timestamp() + interval '@retry_early@');
        CONTINUE WHEN NOT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext('dbjobs.run'),
                                                          pg_catalog.hashtext(job_name));
        -- Released before run_job takes it again: a run started in between makes
        -- this one skipped, as any two runs at once do.
        PERFORM pg_catalog.pg_advisory_unlock(pg_catalog.hashtext('dbjobs.run'), pg_catalog.hashtext(job_name));
        run_id := NULL;
        CALL @schema@.run_job(job_name, 'retry', run_id);
    END LOOP;
END
$$;


-- ===========================================================================
-- Status
-- ===========================================================================

-- Status for a monitoring role that may read nothing else. The status_*
-- functions are SECURITY DEFINER, so they run as the role that installed
-- dbjobs: that role owns the history, and pg_cron's row-level security shows
-- it its own jobs only. They return facts about dbjobs' jobs and nothing else;
-- grant them with
--   GRANT USAGE ON SCHEMA dbjobs TO monitor;
--   GRANT EXECUTE ON FUNCTION dbjobs.status_history(text[]), dbjobs.status_cron(text[], bigint)
--       TO monitor;
-- and, for what needs them, status_backlog(text) (status --backlog),
-- status_runs(text[], integer) (dbjobs serve) and status_events(timestamptz)
-- (dbjobs watch after a reconnection).

-- Every installed job, and any other name asked for (a job in the caller's
-- configuration that is not installed): its definition, whether install left
-- jobs enabled, its latest finished run, latest success and latest partial
-- run, the outcomes of its latest 3 finished runs and the rows each left
-- (backlog_after), its failures since its latest success or partial run, its
-- run in progress, and its runs per outcome. Each is one probe of an index on (job, ...) per job, whatever the
-- size of the history; counting the failures reads at most 1,000 entries.
CREATE FUNCTION @schema@.status_history(names text[])
RETURNS TABLE (name text, installed boolean, enabled boolean, installed_at timestamptz,
               max_age interval, definition jsonb, started_at timestamptz, finished_at timestamptz, status text,
               error text, rows_deleted bigint, run_trigger text, rows_skipped bigint, cascaded_rows jsonb,
               success_at timestamptz, partial_at timestamptz, recent_outcomes text[],
               consecutive_failures bigint, running_since timestamptz, running_rows bigint,
               max_runtime interval, fail_after integer, runs jsonb, recent_backlog bigint[],
               replica_waited interval)
-- PL/pgSQL rather than SQL: its plan is cached for the session, where a SQL
-- function with a SET clause would be planned again on every call.
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- A health check must not wait for JIT compilation (hundreds of ms) when the
-- planner's cost estimate of a large history passes jit_above_cost.
SET jit = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT n.name, j.name IS NOT NULL,
           coalesce((SELECT m.value::boolean FROM @schema@.meta m WHERE m.key = 'enabled'), true),
           coalesce(j.installed_at,
                    (SELECT to_timestamp(m.value::float8) FROM @schema@.meta m WHERE m.key = 'installed_at')),
           j.max_age, to_jsonb(j) - 'name' - 'installed_at',
           last.started_at, last.finished_at, last.status, last.error, last.rows_deleted, last.trigger,
           last.rows_skipped, last.cascaded_rows, success.finished_at, part.finished_at,
           ARRAY(SELECT r.status FROM @schema@.run r
                  WHERE r.job = n.name AND r.status IN ('succeeded', 'failed', 'partial')
                  ORDER BY r.id DESC LIMIT 3),
           (SELECT count(*) FROM (
                SELECT FROM @schema@.run r
                 WHERE r.job = n.name AND r.status = 'failed'
                   AND r.id > greatest(success.id, part.id, 0)
                 LIMIT 1000) f),
           running.started_at, running.rows_deleted + running.partition_rows,
           j.max_runtime, j.fail_after,
           (SELECT jsonb_object_agg(c.outcome, c.runs) FROM @schema@.run_count c WHERE c.job = n.name),
           ARRAY(SELECT r.backlog_after FROM @schema@.run r
                  WHERE r.job = n.name AND r.status IN ('succeeded', 'failed', 'partial')
                  ORDER BY r.id DESC LIMIT 3),
           last.replica_waited
      FROM (SELECT jj.name FROM @schema@.job jj UNION SELECT unnest(names)) AS n(name)
      LEFT JOIN @schema@.job j ON j.name = n.name
      LEFT JOIN LATERAL (
            SELECT r.started_at, r.finished_at, r.status, r.error, r.rows_deleted, r.trigger,
                   r.rows_skipped, r.cascaded_rows, r.replica_waited
              FROM @schema@.run r
             WHERE r.job = n.name AND r.status IN ('succeeded', 'failed', 'partial')
             ORDER BY r.id DESC LIMIT 1) last ON true
      LEFT JOIN LATERAL (
            SELECT r.id, r.finished_at
              FROM @schema@.run r
             WHERE r.job = n.name AND r.status = 'succeeded'
             ORDER BY r.id DESC LIMIT 1) success ON true
      LEFT JOIN LATERAL (
            SELECT r.id, r.finished_at
              FROM @schema@.run r
             WHERE r.job = n.name AND r.status = 'partial'
             ORDER BY r.id DESC LIMIT 1) part ON true
      LEFT JOIN LATERAL (
            SELECT r.started_at, r.rows_deleted, r.partition_rows
              FROM @schema@.run r
             WHERE r.job = n.name AND r.status = 'running'
             ORDER BY r.id DESC LIMIT 1) running ON true
     ORDER BY n.name;
END
$$;

-- The events of the runs that finished after `since` (the finished_at of the
-- last event a listener saw), oldest first, at most 1,000: what `dbjobs watch`
-- reports after it reconnects, for the runs it may have missed. Reads the
-- whole history (pruned to history_retention): called once per reconnection.
CREATE FUNCTION @schema@.status_events(since timestamptz)
RETURNS SETOF json
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT @schema@.run_event(r)
      FROM @schema@.run r
     WHERE r.finished_at > since AND r.status <> 'running'
     ORDER BY r.finished_at, r.id
     LIMIT 1000
$$;

-- dbjobs' pg_cron jobs (the exact names given) and the latest finished run of
-- each among the server's latest window_size runs: cron.job_run_details is
-- indexed on runid alone, and a per-job "latest run" would scan the whole table
-- backwards for a job that has not run lately. Only callable where pg_cron
-- lives in this database; PL/pgSQL, so that it can be created where it does not.
CREATE FUNCTION @schema@.status_cron(jobnames text[], window_size bigint)
RETURNS TABLE (jobid bigint, jobname text, schedule text, active boolean, username text, role_exists boolean,
               run_status text, return_message text, start_time timestamptz, end_time timestamptz,
               pending_status text, pending_start timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off  -- as status_history
-- A generic plan would guess that "runid > floor" keeps a third of the table;
-- planned for the actual floor it is a short index range scan.
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_column
DECLARE
    -- Clamped: the caller may be a monitoring role, and must not make it scan the table.
    floor bigint := (SELECT last_value FROM cron.runid_seq) - least(greatest(window_size, 0), @status_window_max@);
BEGIN
    RETURN QUERY
    -- Only dbjobs' jobs of this database, whatever names are asked for: the
    -- definer's other pg_cron jobs (commands, errors) are none of a monitor's business.
    WITH ours AS (SELECT * FROM cron.job
                   WHERE cron.job.jobname = ANY(jobnames) AND cron.job.jobname LIKE 'dbjobs:%'
                     AND cron.job.database = current_database()),
         runs AS MATERIALIZED (
            SELECT r.jobid, r.runid, r.status, r.return_message, r.start_time, r.end_time
              FROM cron.job_run_details r
             -- = ANY(ARRAY(...)): one pass over the window, not one per job
             WHERE r.runid > floor AND r.jobid = ANY(ARRAY(SELECT o.jobid FROM ours o))),
         latest AS (
            SELECT DISTINCT ON (r.jobid) r.jobid, r.status, r.return_message, r.start_time, r.end_time
              FROM runs r
             WHERE r.status IN ('succeeded', 'failed')
             ORDER BY r.jobid, r.runid DESC),
         -- The job's latest run when pg_cron has not yet handed it to the
         -- database (starting, connecting, sending): pg_cron gives up on those
         -- after 10 s (its task start timeout), so one that stays is a stuck
         -- scheduler. pg_cron stamps start_time only once a run is running.
         pending AS (
            SELECT p.jobid, p.status, p.start_time
              FROM (SELECT DISTINCT ON (r.jobid) r.jobid, r.status, r.start_time
                      FROM runs r ORDER BY r.jobid, r.runid DESC) AS p
             WHERE p.status IN ('starting', 'connecting', 'sending'))
    SELECT j.jobid, j.jobname::text, j.schedule, j.active, j.username::text,
           -- a job whose role was dropped: pg_cron goes on trying to run it as that role
           EXISTS (SELECT FROM pg_roles r WHERE r.rolname = j.username),
           d.status, d.return_message, d.start_time, d.end_time, p.status, p.start_time
      FROM ours j
      LEFT JOIN latest d ON d.jobid = j.jobid
      LEFT JOIN pending p ON p.jobid = j.jobid
    ;
END
$$;


-- The latest finished runs of each installed job named (per_job of them, at
-- most @status_runs_max@): what `dbjobs serve` charts. One probe of the
-- (job, id DESC) index per job, bounded whatever the caller asks or the size of
-- the history; names that are not installed jobs return nothing. Grant it to a
-- monitoring role with the other two.
CREATE FUNCTION @schema@.status_runs(names text[], per_job integer)
RETURNS TABLE (job text, started_at timestamptz, finished_at timestamptz, status text, rows_deleted bigint,
               error text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off  -- as status_history
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT j.name, r.started_at, r.finished_at, r.status, r.rows_deleted, r.error
      FROM @schema@.job j
      CROSS JOIN LATERAL (
            SELECT rr.started_at, rr.finished_at, rr.status, rr.rows_deleted, rr.error
              FROM @schema@.run rr
             WHERE rr.job = j.name AND rr.status IN ('succeeded', 'failed', 'partial')
             ORDER BY rr.id DESC
             LIMIT least(greatest(per_job, 0), @status_runs_max@)) r
     WHERE j.name = ANY(names)
     ORDER BY j.name, r.started_at;
END
$$;

-- A job's backlog, for `dbjobs status --backlog`: the rows eligible for
-- deletion now (count_expired: exact up to backlog_exact_max, else the
-- planner's estimate, and which), and the expiry time of the oldest of them
-- (a row expires at the earliest of its expiry columns: the least of one
-- min() per column, each an index probe where the column has an index).
-- SECURITY DEFINER like the other status functions, so a monitoring role reads
-- it as the job's runs see the table (their privileges and row-level
-- security), with the job's own rule; it returns numbers, never rows. The
-- caller bounds it with a statement timeout: without an index on an expiry
-- column, the count or the probe reads the whole table.
CREATE FUNCTION @schema@.status_backlog(job_name text)
RETURNS TABLE (backlog_rows bigint, backlog_exact boolean, oldest_expired_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
AS $$
#variable_conflict use_column
DECLARE
    j      @schema@.job;
    cutoff timestamptz;
    col    name;
    first  timestamptz;
BEGIN
    SELECT * INTO j FROM @schema@.job WHERE name = job_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'dbjobs: unknown job "%"', job_name
            USING ERRCODE = 'undefined_object', HINT = 'Run `dbjobs install` to register it.';
    END IF;
    cutoff := now() - j.retain;
    SELECT c.total, c.exact INTO backlog_rows, backlog_exact FROM @schema@.count_expired(j, cutoff) AS c;
    IF backlog_rows > 0 THEN
        -- The oldest eligible row's expiry is, over the columns c, the least
        -- min(c) among the rows where c < cutoff and the predicate holds.
        PERFORM set_config('search_path', format('pg_catalog, %I, pg_temp', j.table_schema), true);
        FOREACH col IN ARRAY j.expires LOOP
            EXECUTE format('SELECT min(%1$I)::timestamptz FROM %2$I.%3$I WHERE %1$I < $1 AND %4$s',
                           col, j.table_schema, j.table_name, coalesce('(' || j.predicate || E'\n)', 'true'))
               INTO first USING cutoff;
            oldest_expired_at := least(oldest_expired_at, first);
        END LOOP;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    END IF;
    RETURN NEXT;
END
$$;


-- Jobs run as the role that installed them; nobody else may call these.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @schema@ FROM PUBLIC;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA @schema@ FROM PUBLIC;
