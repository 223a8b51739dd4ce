-- A retried /live/start could be told it is over its limit by the very
-- stream it retries. The check (p_create false) runs without the streamer's
-- lock, and each statement of a PL/pgSQL function reads a fresh snapshot: a
-- concurrent start of the same name that commits between the check's first
-- read (no such stream yet) and its count of the streamer's live streams is
-- counted as another live stream, and the retry gets 409 already_live naming
-- the room it asked for (seen under load in pgbouncer.rs's eight concurrent
-- retries). The stream of this name is never "another" live stream: when it
-- exists, it is this start's own (a retry, answered already_live by the
-- create step under the lock) or someone else's (room_taken). Both counts
-- leave it out; everything else is 0007's.

CREATE OR REPLACE FUNCTION live_start_stream(
    p_room TEXT,
    p_streamer UUID,
    p_title TEXT,
    p_max_live INTEGER,
    p_create BOOLEAN,
    p_room_sid TEXT,
    OUT outcome TEXT,
    OUT live_room TEXT,
    OUT id TEXT,
    OUT title TEXT,
    OUT streamer_id UUID,
    OUT is_live BOOLEAN,
    OUT viewer_count INTEGER,
    OUT created_at TIMESTAMPTZ,
    OUT ended_at TIMESTAMPTZ
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_stream live_streams%ROWTYPE;
BEGIN
    IF p_create THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('live_start_stream:' || p_streamer::text, 0));
        SELECT * INTO v_stream FROM live_streams s WHERE s.id = p_room FOR NO KEY UPDATE;
    ELSE
        SELECT * INTO v_stream FROM live_streams s WHERE s.id = p_room;
    END IF;
    IF v_stream.id IS NOT NULL THEN
        IF v_stream.streamer_id <> p_streamer THEN
            outcome := 'room_taken';
            RETURN;
        END IF;
        IF NOT v_stream.is_live THEN
            outcome := 'room_ended';
            RETURN;
        END IF;
        IF p_create AND p_room_sid IS NOT NULL THEN
            UPDATE live_streams s SET room_sid = p_room_sid
            WHERE s.id = p_room AND s.room_sid IS DISTINCT FROM p_room_sid;
        END IF;
        outcome := 'already_live';
        SELECT v_stream.id, v_stream.title, v_stream.streamer_id, v_stream.is_live, v_stream.viewer_count,
               v_stream.created_at, v_stream.ended_at
        INTO id, title, streamer_id, is_live, viewer_count, created_at, ended_at;
        RETURN;
    END IF;

    SELECT s.id INTO live_room FROM live_streams s
    WHERE s.streamer_id = p_streamer AND s.is_live AND s.id <> p_room
    ORDER BY s.created_at DESC
    LIMIT 1
    OFFSET greatest(p_max_live - 1, 0);
    IF live_room IS NOT NULL THEN
        SELECT s.id INTO live_room FROM live_streams s
        WHERE s.streamer_id = p_streamer AND s.is_live AND s.id <> p_room
        ORDER BY s.created_at DESC
        LIMIT 1;
        outcome := 'over_limit';
        RETURN;
    END IF;
    IF NOT p_create THEN
        outcome := 'available';
        RETURN;
    END IF;

    INSERT INTO live_streams AS s (id, streamer_id, title, room_sid)
    VALUES (p_room, p_streamer, p_title, p_room_sid)
    ON CONFLICT ON CONSTRAINT live_streams_pkey DO NOTHING
    RETURNING s.id, s.title, s.streamer_id, s.is_live, s.viewer_count, s.created_at, s.ended_at
    INTO id, title, streamer_id, is_live, viewer_count, created_at, ended_at;
    -- Not inserted: another streamer's start of the same name committed first.
    outcome := CASE WHEN id IS NULL THEN 'room_taken' ELSE 'created' END;
END
$$;
-- CREATE OR REPLACE keeps the privileges 0007 set (live_api only).
