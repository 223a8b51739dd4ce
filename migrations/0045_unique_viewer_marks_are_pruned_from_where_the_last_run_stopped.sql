-- 0042's pruning of unique-viewer marks found the rooms that still had any
-- by walking live_viewers_seen's key from room to room, every run: as many
-- steps as streams with marks, which is every stream ever on a database that
-- had them before 0042, and the deletes then carried all those rooms at
-- once. A run over a long history could outlast its statement timeout and
-- fail whole, the repairs after the pruning with it.
--
-- The reconciler now goes through the ended streams in the order they
-- ended, at most a fixed number a run, and remembers in this table where it
-- stopped: each run's work is bounded whatever the history, a backlog is
-- worked off run by run, and a stream is passed only once its marks are all
-- gone. The position only moves forward.

CREATE TABLE live_prune_progress (
    task      TEXT PRIMARY KEY,
    ended_at  TIMESTAMPTZ NOT NULL,
    room_name TEXT NOT NULL
);

ALTER TABLE live_prune_progress ENABLE ROW LEVEL SECURITY;
CREATE POLICY live_api_all_rows ON live_prune_progress TO live_api USING (true) WITH CHECK (true);
DO $$
DECLARE
    grantee TEXT;
BEGIN
    FOREACH grantee IN ARRAY ARRAY['PUBLIC', 'anon', 'authenticated'] LOOP
        IF grantee = 'PUBLIC' OR EXISTS (SELECT FROM pg_roles WHERE rolname = grantee) THEN
            EXECUTE format('REVOKE ALL ON TABLE live_prune_progress FROM %s', grantee);
        END IF;
    END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE ON TABLE live_prune_progress TO live_api;
