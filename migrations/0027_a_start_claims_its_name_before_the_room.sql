-- Two streamers starting the same new name at once both passed the check
-- (no stream of that name yet), both called CreateRoom (LiveKit answers
-- both with one room), and one committed the stream. If the other's commit
-- was then refused (over its limit) or failed, it closed the room it had
-- "made": the room of the stream the first had just committed. That host's
-- token then met no room (auto_create is off) and the reconciler ended the
-- stream.
--
-- Now the check claims the name for the caller before answering
-- 'available', so only one streamer at a time gets past it to CreateRoom.
-- The claim is released when the stream commits (the row then holds the
-- name for good; names are never reused) or, by the handler, after a failed
-- start has closed its room. A claim left by a start that died in between
-- (its Lambda timed out or crashed) lapses after CLAIM_LIFETIME, far longer
-- than any start runs (the functions' timeout is 10 s, their deadline 8 s),
-- and the reconciler deletes it. Concurrent starts of one streamer share its
-- claim: a retried start must not be refused by the start it retries.
--
-- Checked with the whole body of 0021's function; what changed is marked.

CREATE TABLE live_room_claims (
    room_name TEXT PRIMARY KEY,
    streamer_id UUID NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE live_room_claims ENABLE ROW LEVEL SECURITY;
CREATE POLICY live_api_all_rows ON live_room_claims TO live_api USING (true) WITH CHECK (true);
DO $$
DECLARE
    grantee TEXT;
BEGIN
    FOREACH grantee IN ARRAY ARRAY['PUBLIC', 'anon', 'authenticated'] LOOP
        IF grantee = 'PUBLIC' OR EXISTS (SELECT FROM pg_roles WHERE rolname = grantee) THEN
            EXECUTE format('REVOKE ALL ON TABLE live_room_claims FROM %s', grantee);
        END IF;
    END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE live_room_claims TO live_api;

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
    v_claimed BOOLEAN;
BEGIN
    IF p_create THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('live_start_stream:' || p_streamer::text, 0));
        SELECT * INTO v_stream FROM live_streams s WHERE s.id = p_room FOR NO KEY UPDATE;
    ELSE
        -- Changed: claim first. Another streamer's fresh claim refuses the
        -- name; one being released by a commit is waited for, and the stream
        -- that commit made is then read below (each statement reads anew).
        INSERT INTO live_room_claims AS c (room_name, streamer_id) VALUES (p_room, p_streamer)
        ON CONFLICT (room_name) DO UPDATE SET streamer_id = excluded.streamer_id, claimed_at = now()
        WHERE c.streamer_id = excluded.streamer_id OR c.claimed_at < now() - interval '60 seconds'
        RETURNING true INTO v_claimed;
        IF v_claimed IS NULL THEN
            outcome := 'room_taken';
            RETURN;
        END IF;
        SELECT * INTO v_stream FROM live_streams s WHERE s.id = p_room;
    END IF;
    IF v_stream.id IS NOT NULL THEN
        -- Changed: the stream holds the name from now on.
        DELETE FROM live_room_claims c WHERE c.room_name = p_room AND c.streamer_id = p_streamer;
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
        -- Changed: a refused check keeps no claim (its transaction rolls
        -- nothing back, so delete it). A refused create keeps it: the
        -- handler releases it once the room it made is closed.
        IF NOT p_create THEN
            DELETE FROM live_room_claims c WHERE c.room_name = p_room AND c.streamer_id = p_streamer;
        END IF;
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
    -- Not inserted: another streamer's start of the same name committed first
    -- (reachable only past a lapsed claim).
    outcome := CASE WHEN id IS NULL THEN 'room_taken' ELSE 'created' END;
    -- Changed: either way a stream now holds the name.
    DELETE FROM live_room_claims c WHERE c.room_name = p_room AND c.streamer_id = p_streamer;
END
$$;
-- CREATE OR REPLACE keeps the privileges 0007 set (live_api only).
