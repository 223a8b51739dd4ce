-- Two of the reconciler's statements from 0065 and 0067, redefined whole.
--
-- live_fold_ended_streams (0067) locked count rows first (deleting the
-- shards it folds) and the stream's row only afterwards, through the foreign
-- key check of a shard 0 it inserts (a reaction kind that had none). An
-- account deleted meanwhile goes the other way: its cascade holds the
-- stream's row and then deletes the count rows. The two deadlocked, and
-- Postgres aborted one of them, maybe the user's deletion. The fold now
-- takes the streams' rows first (FOR KEY SHARE, which a foreign key check
-- needs anyway) and skips one held by someone else: a stream being deleted
-- needs no folding, and one held for a moment is folded on a later run (the
-- walk's position does not pass a stream with rows left).
--
-- live_end_stream_its_host_left (0065) found when the host last left with
-- max(left_at) over every closed session of the room: the room's whole
-- history since the session retention, through the primary key, once a
-- minute per live room. It now asks only whether the host left within the
-- time to return, which the index on left_at bounds by recent leaves.

CREATE OR REPLACE FUNCTION live_fold_ended_streams(p_rooms TEXT[]) RETURNS INTEGER
LANGUAGE plpgsql
AS $$
DECLARE
    v_rooms TEXT[];
BEGIN
    -- Changed: the streams' rows first, skipping one held by another session.
    SELECT coalesce(array_agg(held.id), '{}') INTO v_rooms
    FROM (SELECT s.id FROM live_streams s
          WHERE s.id = ANY (p_rooms) AND NOT s.is_live AND s.ended_at < now() - interval '1 hour'
          FOR KEY SHARE SKIP LOCKED) held;

    WITH gone AS (
        DELETE FROM live_viewer_counts c
        WHERE c.room_name = ANY (v_rooms) AND c.shard <> 0
        RETURNING c.*
    )
    INSERT INTO live_viewer_counts AS c
        (room_name, shard, viewers, closed, unique_viewers, watch_seconds, present_since_sum,
         peak_seen, peak_seen_at)
    SELECT g.room_name, 0, sum(g.viewers), bool_and(g.closed), sum(g.unique_viewers), sum(g.watch_seconds),
           sum(g.present_since_sum), max(g.peak_seen),
           (array_agg(g.peak_seen_at ORDER BY g.peak_seen DESC, g.peak_seen_at) FILTER (WHERE g.peak_seen > 0))[1]
    FROM gone g
    GROUP BY g.room_name
    ON CONFLICT (room_name, shard) DO UPDATE
    SET viewers = c.viewers + excluded.viewers,
        closed = c.closed AND excluded.closed,
        unique_viewers = c.unique_viewers + excluded.unique_viewers,
        watch_seconds = c.watch_seconds + excluded.watch_seconds,
        present_since_sum = c.present_since_sum + excluded.present_since_sum,
        peak_seen = greatest(c.peak_seen, excluded.peak_seen),
        -- The stats read the highest peak, reached first.
        peak_seen_at = CASE
            WHEN excluded.peak_seen > c.peak_seen THEN excluded.peak_seen_at
            WHEN excluded.peak_seen = c.peak_seen AND excluded.peak_seen > 0
                THEN least(c.peak_seen_at, excluded.peak_seen_at)
            ELSE c.peak_seen_at
        END;

    WITH gone AS (
        DELETE FROM live_reaction_counts r
        WHERE r.room_name = ANY (v_rooms) AND r.shard <> 0
        RETURNING r.room_name, r.kind, r.n
    )
    INSERT INTO live_reaction_counts AS r (room_name, kind, shard, n)
    SELECT g.room_name, g.kind, 0, sum(g.n) FROM gone g GROUP BY g.room_name, g.kind
    ON CONFLICT (room_name, kind, shard) DO UPDATE SET n = r.n + excluded.n;

    RETURN cardinality(v_rooms);
END
$$;

CREATE OR REPLACE FUNCTION live_end_stream_its_host_left(p_room TEXT, p_return INTERVAL) RETURNS BOOLEAN
LANGUAGE plpgsql
AS $$
DECLARE
    v_streamer TEXT;
    v_live BOOLEAN;
    v_started TIMESTAMPTZ;
BEGIN
    SELECT s.streamer_id::text, s.is_live, s.created_at INTO v_streamer, v_live, v_started
    FROM live_streams s WHERE s.id = p_room
    FOR NO KEY UPDATE;
    IF NOT FOUND OR NOT v_live THEN
        RETURN false;
    END IF;
    IF EXISTS (
        SELECT FROM live_participant_sessions p
        WHERE p.room_name = p_room AND NOT p.counted AND p.left_at IS NULL
          AND (p.identity = v_streamer OR p.identity LIKE v_streamer || '#%')
    ) THEN
        RETURN false;
    END IF;
    -- Changed: whether the host left within the time to return, not when
    -- they last left.
    IF v_started > now() - p_return OR EXISTS (
        SELECT FROM live_participant_sessions p
        WHERE p.left_at > now() - p_return AND p.room_name = p_room AND NOT p.counted
          AND (p.identity = v_streamer OR p.identity LIKE v_streamer || '#%')
    ) THEN
        RETURN false;
    END IF;
    UPDATE live_streams s SET is_live = false, ended_at = now() WHERE s.id = p_room;
    PERFORM live_close_counts(p_room);
    RETURN true;
END
$$;
-- CREATE OR REPLACE keeps their privileges (live_api only, 0065 and 0067).
