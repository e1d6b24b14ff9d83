-- name: schema_state
-- What the configured schema holds. dbjobs marks its schema with a comment
-- (see tables.sql); an application table that happens to be called "meta"
-- does not make a schema dbjobs'. The last column lists whatever dbjobs did
-- not create there: uninstall refuses to drop a schema holding any of it.
-- The routine names are those of every version (routines.sql now), so that
-- an install an older dbjobs made can be removed too.
SELECT coalesce(obj_description(n.oid, 'pg_namespace'), '') LIKE 'dbjobs:%%',
       EXISTS (SELECT FROM pg_class WHERE relnamespace = n.oid)
           OR EXISTS (SELECT FROM pg_proc WHERE pronamespace = n.oid),
       ARRAY(SELECT c.relname::text FROM pg_class c
              WHERE c.relnamespace = n.oid AND c.relkind NOT IN ('i', 'S', 'c')
                AND c.relname NOT IN ('meta', 'job', 'run', 'run_count')
             UNION ALL
             SELECT p.proname::text FROM pg_proc p
              WHERE p.pronamespace = n.oid
                AND p.proname NOT IN ('expired_rule', 'partition_expired', 'removable_partitions', 'start_run',
                                      'next_target', 'remove_partition', 'delete_batch', 'finish_run', 'run_job',
                                      'status_history', 'status_cron', 'status_runs', 'one_line_error', 'dry_run', 'expired_estimate',
                                      'sweep_batch', 'index_batch', 'delete_held', 'delete_counted',
                                      'cascade_counts', 'cascaded_since', 'count_batch', 'count_outcome',
                                      'count_expired', 'backlog_left', 'status_backlog', 'run_event',
                                      'status_events', 'retries', 'retry_due', 'between_batches',
                                      'replicas_behind', 'replica_lag_readable', 'moved_rows', 'archive_insert'))
  FROM pg_namespace n
 WHERE n.nspname = %(schema)s;

-- name: index_for_column
-- Whether some valid, complete btree index of the table has the column as its
-- first key, so that the cleanup's range comparison on that column can use it
-- (a hash index cannot serve "<"); and the names of the valid partial btree
-- indexes that do (with their partitions' for a partitioned index, as EXPLAIN
-- names them): doctor asks the planner whether the job's rule lets it use one
-- (whether the rule implies the index's predicate) rather than parse either.
WITH candidates AS (
    SELECT i.indexrelid, i.indpred IS NULL AS complete
      FROM pg_index i
      JOIN pg_class c ON c.oid = i.indexrelid
      JOIN pg_am am ON am.oid = c.relam AND am.amname = 'btree'
     WHERE i.indrelid = to_regclass(%(table)s)
       AND i.indisvalid
       AND i.indkey[0] = (SELECT attnum FROM pg_attribute
                           WHERE attrelid = i.indrelid AND attname = %(column)s AND NOT attisdropped))
SELECT EXISTS (SELECT FROM candidates WHERE complete),
       ARRAY(SELECT c.relname::text FROM candidates l JOIN pg_class c ON c.oid = l.indexrelid WHERE NOT l.complete
             UNION
             SELECT c.relname::text FROM candidates l, pg_partition_tree(l.indexrelid) t
               JOIN pg_class c ON c.oid = t.relid
              WHERE NOT l.complete);

-- name: preload
-- shared_preload_libraries, when this role may read it (superusers and
-- pg_read_all_settings), else NULL.
SELECT CASE WHEN pg_has_role(current_user, 'pg_read_all_settings', 'USAGE')
            THEN current_setting('shared_preload_libraries') END,
       has_database_privilege(current_database(), 'CREATE');

-- name: routine_grants
-- EXECUTE granted on dbjobs' routines to roles other than their owner (a
-- monitoring role): an upgrade drops and creates the routines again, and
-- grants them again from this list.
SELECT p.proname::text, a.grantee::regrole::text
  FROM pg_proc p, aclexplode(p.proacl) a
 WHERE p.pronamespace = to_regnamespace(quote_ident(%(schema)s))
   AND a.privilege_type = 'EXECUTE' AND a.grantee NOT IN (0, p.proowner);
