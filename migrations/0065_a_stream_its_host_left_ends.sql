-- LiveKit closes a room only once it is empty: a host whose phone died, or
-- who closed the app without /live/end, left the stream live for as long as
-- one viewer stayed in the room, watching nothing, the stream listed as
-- live and its chat open. Now the reconciler, right after syncing a live
-- room's sessions with LiveKit's listing, ends its stream when the host has
-- been out of the room for HOST_RETURN_SECONDS: no open session of the
-- streamer's identity, nor of one of the streamer's side connections
-- (`<streamer>#<name>`, publishing for the host), and the last of them left
-- (or the stream started, for a host who never joined) that long ago. The
-- stream ends now, not as of when the host left (as a stream whose room
-- vanished does, 0029): viewers kept joining the room since, and
-- live_close_counts takes the end as the moment every present viewer left,
-- so an earlier end would take their time from the others in their shard.
-- Its room is left unclosed for the reconciler to close with DeleteRoom,
-- which disconnects everyone.
-- Lock order as /live/end's: the stream's row first, then live_close_counts.

-- No index of its own: building one would hold back every webhook's session
-- write while it reads the whole table, at deploy time. The room's sessions
-- are found by the primary key's room_name; once a minute per live room, a
-- room of 50,000 costs a scan of its 50,000 rows.

CREATE FUNCTION live_end_stream_its_host_left(p_room TEXT, p_return INTERVAL) RETURNS BOOLEAN
LANGUAGE plpgsql
AS $$
DECLARE
    v_streamer TEXT;
    v_live BOOLEAN;
    v_started TIMESTAMPTZ;
    v_left TIMESTAMPTZ;
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
    SELECT greatest(v_started, max(p.left_at)) INTO v_left
    FROM live_participant_sessions p
    WHERE p.room_name = p_room AND NOT p.counted
      AND (p.identity = v_streamer OR p.identity LIKE v_streamer || '#%');
    IF v_left > now() - p_return THEN
        RETURN false;
    END IF;
    UPDATE live_streams s SET is_live = false, ended_at = now() WHERE s.id = p_room;
    PERFORM live_close_counts(p_room);
    RETURN true;
END
$$;

CALL live_revoke_from_api_roles(ARRAY['live_end_stream_its_host_left(TEXT, INTERVAL)']::REGPROCEDURE[]);
GRANT EXECUTE ON FUNCTION live_end_stream_its_host_left(TEXT, INTERVAL) TO live_api;
