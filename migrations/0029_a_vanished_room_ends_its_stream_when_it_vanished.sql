-- A stream whose LiveKit room vanished without room_finished (a self-hosted
-- server restarted: a single node keeps its rooms in memory; the webhooks
-- were lost) is ended by the reconciler once the room has been missing for
-- RECONCILE_GRACE_SECONDS. Its stats then counted the grace and the runs
-- around it as time watched by everyone still marked present, and its
-- duration ran to the moment the reconciler ended it: up to three minutes
-- too long for each. Now such a stream ends at room_missing_since, the first
-- run that found the room gone, and closing its counts takes the stream's
-- ended_at, not the clock, as the moment every present viewer left. Ends
-- that are told at once (/live/end, room_finished) end now, as before.
-- Whole bodies of 0009's live_finish_stream and 0026's live_close_counts;
-- what changed is marked.

CREATE OR REPLACE FUNCTION live_finish_stream(p_room TEXT, p_grace INTERVAL) RETURNS BOOLEAN
LANGUAGE plpgsql
AS $$
BEGIN
    -- Changed: ended by the reconciler, the stream ends when its room was
    -- first found missing, not a grace period and a run later.
    UPDATE live_streams
    SET is_live = false,
        ended_at = CASE WHEN p_grace IS NULL THEN now() ELSE least(room_missing_since, now()) END,
        room_closed_at = coalesce(room_closed_at, now())
    WHERE id = p_room AND is_live
      AND (p_grace IS NULL OR room_missing_since <= now() - p_grace);
    IF FOUND THEN
        PERFORM live_close_counts(p_room);
        RETURN true;
    END IF;
    IF p_grace IS NULL THEN
        UPDATE live_streams SET room_closed_at = now() WHERE id = p_room AND room_closed_at IS NULL;
    END IF;
    RETURN false;
END
$$;

CREATE OR REPLACE FUNCTION live_close_counts(p_room TEXT) RETURNS VOID
LANGUAGE plpgsql
AS $$
DECLARE
    -- Changed: as of the stream's end, which a stream whose room vanished
    -- has before the moment it is ended (live_finish_stream below).
    v_end TIMESTAMPTZ := coalesce((SELECT ended_at FROM live_streams WHERE id = p_room AND NOT is_live), now());
    v_now DOUBLE PRECISION := extract(epoch FROM v_end);
BEGIN
    PERFORM 1 FROM live_participant_sessions
    WHERE room_name = p_room AND left_at IS NULL
    ORDER BY sid
    FOR UPDATE;
    UPDATE live_participant_sessions SET left_at = v_end, updated_at = now()
    WHERE room_name = p_room AND left_at IS NULL;
    PERFORM 1 FROM live_presence WHERE room_name = p_room ORDER BY identity FOR UPDATE;
    DELETE FROM live_presence WHERE room_name = p_room;
    -- Changed: and no one is away from the stage of an ended stream (0028).
    UPDATE live_stage SET hand_raised_at = NULL, invited_at = NULL, on_stage_since = NULL, away_since = NULL
    WHERE room_name = p_room;
    PERFORM 1 FROM live_viewer_counts WHERE room_name = p_room ORDER BY shard FOR UPDATE;
    PERFORM live_note_peak(p_room, live_viewer_count(p_room));
    INSERT INTO live_viewer_counts AS c (room_name, shard, viewers, closed)
    SELECT p_room, g, 0, true FROM generate_series(0, 15) AS g
    ON CONFLICT (room_name, shard) DO UPDATE
    SET watch_seconds = CASE WHEN c.closed THEN c.watch_seconds
                             ELSE c.watch_seconds + greatest(c.viewers * v_now - c.present_since_sum, 0) END,
        present_since_sum = 0, viewers = 0, closed = true;
    UPDATE live_streams SET viewer_count = 0, viewer_count_written_at = clock_timestamp()
    WHERE id = p_room AND viewer_count <> 0;
END
$$;
-- CREATE OR REPLACE keeps the privileges 0009 and 0012 set.
