-- LiveKit room instances, sessions the reconciler may reopen, pruning, and
-- starting a stream in one locked statement.

-- The LiveKit room instance (`Room.sid` from CreateRoom). A room name may be
-- created again (a retried start after the empty room timed out); webhooks of
-- another instance, such as a late room_finished of the previous one, are
-- ignored.
ALTER TABLE live_streams ADD COLUMN room_sid TEXT;

-- A session the reconciler closed because LiveKit did not list it. Only such
-- a session may be reopened by a later listing; one closed by a leave event
-- stays closed.
ALTER TABLE live_participant_sessions
    ADD COLUMN closed_by_reconciler BOOLEAN NOT NULL DEFAULT false;

-- Pruning (the reconciler, in bounded batches): closed sessions, and every
-- session of an ended stream, after the retention period.
CREATE INDEX live_participant_sessions_left_at_idx
    ON live_participant_sessions (left_at) WHERE left_at IS NOT NULL;
CREATE INDEX live_streams_ended_at_idx ON live_streams (ended_at) WHERE NOT is_live;
-- Ended streams whose room LiveKit has not confirmed closed: the reconciler
-- retries DeleteRoom for them.
CREATE INDEX live_streams_room_open_idx
    ON live_streams (ended_at) WHERE NOT is_live AND room_closed_at IS NULL;
-- A streamer's live streams, for MAX_LIVE_STREAMS_PER_STREAMER.
CREATE INDEX live_streams_streamer_live_idx ON live_streams (streamer_id, created_at DESC) WHERE is_live;

-- /live/start's database work, in one statement (one round trip, safe behind
-- a transaction-mode pooler, no transaction held open across LiveKit calls).
-- With p_create false it only checks, before the room is created in LiveKit;
-- with p_create true it creates the stream, or re-reads the caller's live
-- stream of that name (a retried start) under its row lock, so a concurrent
-- /live/end either commits first (then: room_ended) or waits.
-- One streamer's starts run one after another (an advisory lock for the
-- statement), so two starts at once cannot both pass p_max_live.
--
-- outcome: available (check only), created, already_live, room_taken (another
-- streamer's), room_ended (the caller's, ended), over_limit (live_room names
-- the caller's newest live stream). The stream columns are set for created
-- and already_live.
CREATE FUNCTION live_start_stream(
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
    WHERE s.streamer_id = p_streamer AND s.is_live
    ORDER BY s.created_at DESC
    LIMIT 1
    OFFSET greatest(p_max_live - 1, 0);
    IF live_room IS NOT NULL THEN
        SELECT s.id INTO live_room FROM live_streams s
        WHERE s.streamer_id = p_streamer AND s.is_live
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

DO $$
DECLARE
    grantee TEXT;
BEGIN
    FOREACH grantee IN ARRAY ARRAY['PUBLIC', 'anon', 'authenticated'] LOOP
        IF grantee = 'PUBLIC' OR EXISTS (SELECT FROM pg_roles WHERE rolname = grantee) THEN
            EXECUTE format(
                'REVOKE ALL ON FUNCTION live_start_stream(TEXT, UUID, TEXT, INTEGER, BOOLEAN, TEXT) FROM %s',
                grantee);
        END IF;
    END LOOP;
END
$$;
GRANT EXECUTE ON FUNCTION live_start_stream(TEXT, UUID, TEXT, INTEGER, BOOLEAN, TEXT) TO live_api;
