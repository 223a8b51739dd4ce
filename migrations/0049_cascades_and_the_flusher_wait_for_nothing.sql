-- Two statements waited where they had no need to.
--
-- Deleting a stream (the streamer's account deleted, migration 0046)
-- cascades to its messages, and each deleted message to its moderation
-- records by `message_id`, each deleted stream to its deletion audit rows
-- by `room_name`: neither column was indexed, so every cascaded row scanned
-- the whole app's table, and deleting a prolific streamer cost messages ×
-- moderation records, held its locks for as long, and could outlast
-- Supabase's own timeout. Every foreign key now has an index leading with
-- its columns (`every_foreign_key_has_an_index`).
--
-- The flusher wrote every stale copy in one UPDATE that waited for each
-- stream row's lock: one busy end (which holds its stream's row while it
-- closes a big room) made the once-a-second flush of every room wait for
-- it and fail at lock_timeout, and the reconciler's multi-row update could
-- deadlock with it. It now takes the rows it will write in id order and
-- skips those locked; a skipped room's copy is written by the next tick.

CREATE INDEX live_moderation_actions_message_idx ON live_moderation_actions (message_id);
CREATE INDEX live_message_deletions_room_idx ON live_message_deletions (room_name);

CREATE OR REPLACE FUNCTION live_flush_viewer_counts() RETURNS TABLE (room_name TEXT, viewer_count INTEGER)
LANGUAGE sql
AS $$
    WITH counted AS (
        SELECT l.id, (SELECT coalesce(sum(v.viewers), 0)::int FROM live_viewer_counts v WHERE v.room_name = l.id) AS n
        FROM live_streams l
        WHERE l.is_live
    ), stale AS (
        -- Changed: only the rows to be written are locked, none waited for.
        SELECT s.id, c.n
        FROM live_streams s JOIN counted c ON c.id = s.id
        WHERE s.is_live AND s.viewer_count <> c.n
          AND s.viewer_count_written_at <= clock_timestamp() - interval '1 second'
        ORDER BY s.id
        FOR NO KEY UPDATE OF s SKIP LOCKED
    ), written AS (
        UPDATE live_streams s
        SET viewer_count = stale.n, viewer_count_written_at = clock_timestamp()
        FROM stale
        WHERE s.id = stale.id
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
