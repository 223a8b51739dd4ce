-- live_viewers_seen keeps one row per viewer a stream ever had, so that each
-- counts once in its unique viewers; nothing deleted them, so the table grew
-- with every viewer of every stream for ever. Once a stream has ended its
-- unique-viewer figure is final (live_viewer_counts keeps it) and no event
-- changes its counts, so the reconciler now deletes the marks of streams
-- that ended longer ago than the session retention, in bounded batches.
--
-- It goes through the ended streams in the order they ended, at most a
-- fixed number a run, and remembers in live_prune_progress where it
-- stopped: each run's work is bounded whatever the history, a backlog is
-- worked off run by run, and a stream is passed only once its marks are all
-- gone. The position only moves forward.

GRANT DELETE ON TABLE live_viewers_seen TO live_api;

CREATE TABLE live_prune_progress (
    task      TEXT PRIMARY KEY,
    ended_at  TIMESTAMPTZ NOT NULL,
    room_name TEXT NOT NULL
);

-- Tables get what routines got in 0017: one procedure for the loop every
-- migration that made a table wrote again, to revoke Supabase's default
-- grants to anon and authenticated (see 0006) and PUBLIC's, skipping the
-- roles a bare Postgres does not have.
CREATE PROCEDURE live_revoke_tables_from_api_roles(p_tables REGCLASS[])
LANGUAGE plpgsql
AS $$
DECLARE
    grantee TEXT;
    target REGCLASS;
BEGIN
    FOREACH grantee IN ARRAY ARRAY['PUBLIC', 'anon', 'authenticated'] LOOP
        IF grantee = 'PUBLIC' OR EXISTS (SELECT FROM pg_roles WHERE rolname = grantee) THEN
            FOREACH target IN ARRAY p_tables LOOP
                EXECUTE format('REVOKE ALL ON TABLE %s FROM %s', target, grantee);
            END LOOP;
        END IF;
    END LOOP;
END
$$;
CALL live_revoke_from_api_roles(ARRAY['live_revoke_tables_from_api_roles(REGCLASS[])']::REGPROCEDURE[]);

ALTER TABLE live_prune_progress ENABLE ROW LEVEL SECURITY;
CREATE POLICY live_api_all_rows ON live_prune_progress TO live_api USING (true) WITH CHECK (true);
CALL live_revoke_tables_from_api_roles(ARRAY['live_prune_progress']::REGCLASS[]);
GRANT SELECT, INSERT, UPDATE ON TABLE live_prune_progress TO live_api;
