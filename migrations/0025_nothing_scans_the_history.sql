-- What ran every second or every minute read every stream there ever was.
--
-- The flusher (live_flush_viewer_counts, every second) summed the shards of
-- every stream in a grouped subquery before joining the live ones: each ended
-- stream keeps its sixteen closed shards (its final figures), so the flush
-- read them all, a cost that grew with every stream ever created (3.2 million
-- shard rows, 200,000 ended streams: 2.3 s a flush). It now sums the shards
-- of the live streams only, each through its primary key.
--
-- The reconciler's pruning found the open sessions of ended streams by
-- walking every ended stream past the retention period, on every run. Open
-- sessions are few (the viewers present now, and a join that committed while
-- its stream ended), so it now starts from them: this index, which replaces
-- 0003's index of counted present sessions (no statement filters on
-- `counted`), finds a room's open sessions and every open session.

CREATE OR REPLACE FUNCTION live_flush_viewer_counts() RETURNS TABLE (room_name TEXT, viewer_count INTEGER)
LANGUAGE sql
AS $$
    WITH counted AS (
        SELECT l.id, (SELECT coalesce(sum(v.viewers), 0)::int FROM live_viewer_counts v WHERE v.room_name = l.id) AS n
        FROM live_streams l
        WHERE l.is_live
    ), written AS (
        UPDATE live_streams s
        SET viewer_count = c.n, viewer_count_written_at = clock_timestamp()
        FROM counted c
        WHERE s.id = c.id AND s.is_live AND s.viewer_count <> c.n
          AND s.viewer_count_written_at <= clock_timestamp() - interval '1 second'
        RETURNING s.id, s.viewer_count
    ), peaks AS (
        INSERT INTO live_stream_stats AS t (room_name, peak_viewers, peak_at)
        SELECT id, written.viewer_count, now() FROM written
        ON CONFLICT (room_name) DO UPDATE SET peak_viewers = EXCLUDED.peak_viewers, peak_at = EXCLUDED.peak_at
        WHERE t.peak_viewers < EXCLUDED.peak_viewers
    )
    SELECT id, written.viewer_count FROM written
$$;
-- CREATE OR REPLACE keeps its privileges (live_api only, 0012).

DROP INDEX live_participant_sessions_present_idx;
CREATE INDEX live_participant_sessions_open_idx ON live_participant_sessions (room_name, sid)
    WHERE left_at IS NULL;
