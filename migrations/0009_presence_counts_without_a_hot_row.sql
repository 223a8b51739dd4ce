-- Viewer counts without a hot row.
--
-- Until now every join or leave locked the stream's row, upserted its session,
-- recounted count(DISTINCT identity) over the room's present sessions and
-- rewrote live_streams: serialised per room and O(n) each, so a burst of n
-- joins cost O(n^2), and every change was an UPDATE of live_streams that
-- Supabase Realtime sent to every subscriber.
--
-- Now a session change touches only its own rows:
--   live_participant_sessions  one row per LiveKit session (sid), as before:
--                              duplicates and out-of-order events stay harmless;
--   live_presence              one row per identity present in a room, with how
--                              many of its sessions are present;
--   live_viewer_counts         the room's count in 16 shards (by identity), so
--                              concurrent joins rarely wait on one another;
-- and the stream row is not locked. Reads sum the shards (16 rows, whatever
-- the audience: live_viewer_count). live_streams.viewer_count becomes a copy
-- for Realtime subscribers, written at most once a second per room: by the
-- event that finds the last write a second old, or by the scheduled flusher
-- (live_flush_viewer_counts), which guarantees the trailing update.
--
-- An ended stream's shards are closed: no later event changes its count.

CREATE TABLE live_presence (
    room_name TEXT NOT NULL REFERENCES live_streams (id) ON DELETE CASCADE,
    identity  TEXT NOT NULL,
    sessions  INTEGER NOT NULL CHECK (sessions > 0),
    joined_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_name, identity)
);

CREATE TABLE live_viewer_counts (
    room_name  TEXT NOT NULL REFERENCES live_streams (id) ON DELETE CASCADE,
    shard      SMALLINT NOT NULL CHECK (shard BETWEEN 0 AND 15),
    viewers    INTEGER NOT NULL DEFAULT 0 CHECK (viewers >= 0),
    closed     BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (room_name, shard)
);

ALTER TABLE live_streams ADD COLUMN viewer_count_written_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity';

-- Today's state: presence from the present sessions of live streams, and
-- each identity counted in its shard; ended streams get closed shards.
INSERT INTO live_presence (room_name, identity, sessions)
SELECT p.room_name, p.identity, count(*)
FROM live_participant_sessions p JOIN live_streams s ON s.id = p.room_name
WHERE s.is_live AND p.counted AND p.joined AND p.left_at IS NULL
GROUP BY p.room_name, p.identity;
INSERT INTO live_viewer_counts (room_name, shard, viewers)
SELECT room_name, hashtext(identity) & 15, count(*)
FROM live_presence
GROUP BY room_name, hashtext(identity) & 15;
INSERT INTO live_viewer_counts (room_name, shard, viewers, closed)
SELECT s.id, g, 0, true FROM live_streams s, generate_series(0, 15) AS g WHERE NOT s.is_live;

ALTER TABLE live_presence ENABLE ROW LEVEL SECURITY;
ALTER TABLE live_viewer_counts ENABLE ROW LEVEL SECURITY;
CREATE POLICY live_api_all_rows ON live_presence TO live_api USING (true) WITH CHECK (true);
CREATE POLICY live_api_all_rows ON live_viewer_counts TO live_api USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE live_presence TO live_api;
GRANT SELECT, INSERT, UPDATE ON TABLE live_viewer_counts TO live_api;

-- The exact count of a room: its shards summed.
CREATE FUNCTION live_viewer_count(p_room TEXT) RETURNS INTEGER
LANGUAGE sql STABLE
AS $$
    SELECT coalesce(sum(viewers), 0)::int FROM live_viewer_counts WHERE room_name = p_room
$$;

-- One session's change: 'join', 'leave' (LiveKit's events), 'close' (the
-- reconciler: not listed) or 'reopen' (the reconciler: listed again after it
-- closed the session), on the session and the identity's presence. Returns
-- +1 or -1 when the identity came or went (the room's count must change),
-- else 0. The caller applies that to the identity's shard
-- (live_session_change), last: a transaction that holds a shard lock waits
-- for nothing else, so no two callers can wait on each other in a cycle.
CREATE FUNCTION live_presence_change(p_room TEXT, p_sid TEXT, p_identity TEXT, p_counted BOOLEAN, p_change TEXT)
RETURNS INTEGER
LANGUAGE plpgsql
AS $$
DECLARE
    v_session live_participant_sessions%ROWTYPE;
    v_was_present BOOLEAN;
    v_is_present BOOLEAN;
    v_sessions INTEGER;
    v_delta INTEGER := 0;
BEGIN
    SELECT * INTO v_session FROM live_participant_sessions
    WHERE room_name = p_room AND sid = p_sid
    FOR UPDATE;
    v_was_present := FOUND AND v_session.joined AND v_session.left_at IS NULL;
    IF NOT FOUND THEN
        -- A leave that arrives before its join keeps the session gone.
        INSERT INTO live_participant_sessions (room_name, sid, identity, counted, joined, left_at)
        VALUES (p_room, p_sid, p_identity, p_counted, p_change IN ('join', 'reopen'),
                CASE WHEN p_change IN ('join', 'reopen') THEN NULL ELSE now() END);
        v_is_present := p_change IN ('join', 'reopen');
    ELSIF p_change = 'join' THEN
        UPDATE live_participant_sessions SET joined = true, updated_at = now()
        WHERE room_name = p_room AND sid = p_sid;
        v_is_present := v_session.left_at IS NULL;
    ELSIF p_change = 'reopen' THEN
        UPDATE live_participant_sessions
        SET joined = true, updated_at = now(),
            left_at = CASE WHEN closed_by_reconciler THEN NULL ELSE left_at END,
            closed_by_reconciler = false
        WHERE room_name = p_room AND sid = p_sid;
        v_is_present := v_session.left_at IS NULL OR v_session.closed_by_reconciler;
    ELSE
        UPDATE live_participant_sessions
        SET left_at = coalesce(left_at, now()), updated_at = now(),
            closed_by_reconciler = (p_change = 'close' AND left_at IS NULL) OR (closed_by_reconciler AND p_change = 'close')
        WHERE room_name = p_room AND sid = p_sid;
        v_is_present := false;
    END IF;

    IF v_was_present = v_is_present OR NOT coalesce(v_session.counted, p_counted) THEN
        RETURN 0;
    END IF;
    IF v_is_present THEN
        INSERT INTO live_presence AS p (room_name, identity, sessions) VALUES (p_room, p_identity, 1)
        ON CONFLICT (room_name, identity) DO UPDATE SET sessions = p.sessions + 1
        RETURNING sessions INTO v_sessions;
        v_delta := CASE WHEN v_sessions = 1 THEN 1 ELSE 0 END;
    ELSE
        UPDATE live_presence SET sessions = sessions - 1
        WHERE room_name = p_room AND identity = p_identity AND sessions > 1;
        IF NOT FOUND THEN
            DELETE FROM live_presence WHERE room_name = p_room AND identity = p_identity;
            v_delta := CASE WHEN FOUND THEN -1 ELSE 0 END;
        END IF;
    END IF;
    RETURN v_delta;
END
$$;

-- Adds p_delta to one of the room's count shards, unless the stream has ended
-- (its shards are closed: the count stays as it ended). Returns whether it did.
CREATE FUNCTION live_count_add(p_room TEXT, p_shard INTEGER, p_delta INTEGER) RETURNS BOOLEAN
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO live_viewer_counts AS c (room_name, shard, viewers)
    VALUES (p_room, p_shard, greatest(p_delta, 0))
    ON CONFLICT (room_name, shard) DO UPDATE SET viewers = greatest(c.viewers + p_delta, 0)
    WHERE NOT c.closed;
    RETURN FOUND;
END
$$;

-- One session's change, its presence and its shard.
CREATE FUNCTION live_session_change(p_room TEXT, p_sid TEXT, p_identity TEXT, p_counted BOOLEAN, p_change TEXT)
RETURNS INTEGER
LANGUAGE plpgsql
AS $$
DECLARE
    v_delta INTEGER := live_presence_change(p_room, p_sid, p_identity, p_counted, p_change);
BEGIN
    IF v_delta <> 0 AND NOT live_count_add(p_room, hashtext(p_identity) & 15, v_delta) THEN
        RETURN 0;
    END IF;
    RETURN v_delta;
END
$$;

-- Copies the exact count into live_streams.viewer_count if it changed and the
-- last copy is a second old. Returns whether it wrote. A row another event is
-- writing right now is skipped, not waited for: that write (or the flusher's
-- next one) carries the count.
CREATE FUNCTION live_write_viewer_count(p_room TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE live_streams s
    SET viewer_count = live_viewer_count(p_room), viewer_count_written_at = clock_timestamp()
    WHERE s.id = (
        SELECT d.id FROM live_streams d
        WHERE d.id = p_room AND d.is_live
          AND d.viewer_count_written_at <= clock_timestamp() - interval '1 second'
        FOR NO KEY UPDATE SKIP LOCKED
    )
      AND s.viewer_count <> live_viewer_count(p_room);
    RETURN FOUND;
END
$$;

-- A participant webhook in one statement: the event id (a duplicate changes
-- nothing), the stream (an unknown room, another instance of it, or an ended
-- stream change no count), the session change, the Realtime copy when due,
-- and what the caller needs to enforce in the room: the streamer, whether the
-- stream is live, and the participant's restrictions.
CREATE FUNCTION live_participant_event(
    p_event_id TEXT,
    p_room TEXT,
    p_room_sid TEXT,
    p_change TEXT,
    p_sid TEXT,
    p_identity TEXT,
    p_user UUID,
    p_hidden BOOLEAN,
    OUT outcome TEXT,
    OUT streamer_id UUID,
    OUT is_live BOOLEAN,
    OUT banned BOOLEAN,
    OUT muted BOOLEAN
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_room_sid TEXT;
BEGIN
    IF p_event_id <> '' THEN
        INSERT INTO live_webhook_events (id) VALUES (p_event_id) ON CONFLICT (id) DO NOTHING;
        IF NOT FOUND THEN
            outcome := 'duplicate';
            RETURN;
        END IF;
    END IF;
    SELECT s.streamer_id, s.is_live, s.room_sid INTO streamer_id, is_live, v_room_sid
    FROM live_streams s WHERE s.id = p_room;
    IF NOT FOUND OR (p_room_sid <> '' AND v_room_sid IS NOT NULL AND v_room_sid <> p_room_sid) THEN
        outcome := 'ignored';
        streamer_id := NULL;
        RETURN;
    END IF;
    -- p_user: the identity as a user id, when it is one.
    IF p_user IS NOT NULL THEN
        SELECT r.banned, r.muted INTO banned, muted
        FROM live_room_restrictions r WHERE r.room_name = p_room AND r.user_id = p_user;
    END IF;
    banned := coalesce(banned, false);
    muted := coalesce(muted, false);
    IF NOT is_live THEN
        outcome := 'ignored';
        RETURN;
    END IF;
    PERFORM live_session_change(
        p_room, p_sid, p_identity, NOT p_hidden AND p_identity <> streamer_id::text, p_change);
    PERFORM live_write_viewer_count(p_room);
    outcome := 'applied';
END
$$;

-- The reconciler's listing of a room at p_listed_at: sessions not listed and
-- written before the listing close, listed ones join (or reopen, if the
-- reconciler had closed them). Returns how many sessions changed.
CREATE FUNCTION live_sync_sessions(
    p_room TEXT,
    p_listed_at TIMESTAMPTZ,
    p_sids TEXT[],
    p_identities TEXT[],
    p_counted BOOLEAN[]
) RETURNS INTEGER
LANGUAGE plpgsql
AS $$
DECLARE
    v_changed INTEGER := 0;
    v_deltas INTEGER[] := array_fill(0, ARRAY[16]);
    v_delta INTEGER;
    v_session RECORD;
    v_shard INTEGER;
BEGIN
    IF NOT EXISTS (SELECT FROM live_streams WHERE id = p_room AND is_live) THEN
        RETURN 0; -- ended since it was listed: its counts are closed
    END IF;
    -- Every session this run may change is locked first, in sid order, before
    -- any presence or shard: a webhook waiting on one of them holds nothing
    -- this run wants, and two runs lock in the same order. Shards come last,
    -- in shard order.
    PERFORM 1 FROM live_participant_sessions
    WHERE room_name = p_room
      AND (sid = ANY (p_sids) OR (joined AND left_at IS NULL AND updated_at < p_listed_at))
    ORDER BY sid
    FOR UPDATE;
    FOR v_session IN
        SELECT sid, identity, counted, 'close' AS change FROM live_participant_sessions
        WHERE room_name = p_room AND joined AND left_at IS NULL
          AND NOT (sid = ANY (p_sids)) AND updated_at < p_listed_at
        UNION ALL
        SELECT listed.sid, listed.identity, listed.counted, 'reopen'
        FROM unnest(p_sids, p_identities, p_counted) AS listed (sid, identity, counted)
        ORDER BY 1
    LOOP
        v_delta := live_presence_change(p_room, v_session.sid, v_session.identity, v_session.counted, v_session.change);
        IF v_delta <> 0 THEN
            v_shard := hashtext(v_session.identity) & 15;
            v_deltas[v_shard + 1] := v_deltas[v_shard + 1] + v_delta;
            v_changed := v_changed + 1;
        END IF;
    END LOOP;
    FOR v_shard IN 0 .. 15 LOOP
        IF v_deltas[v_shard + 1] <> 0 THEN
            PERFORM live_count_add(p_room, v_shard, v_deltas[v_shard + 1]);
        END IF;
    END LOOP;
    PERFORM live_write_viewer_count(p_room);
    RETURN v_changed;
END
$$;

-- The stream is over (ended, or its room finished): every session closes,
-- nobody is present, and the shards are closed at 0.
CREATE FUNCTION live_close_counts(p_room TEXT) RETURNS VOID
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO live_viewer_counts AS c (room_name, shard, viewers, closed)
    SELECT p_room, g, 0, true FROM generate_series(0, 15) AS g
    ON CONFLICT (room_name, shard) DO UPDATE SET viewers = 0, closed = true;
    DELETE FROM live_presence WHERE room_name = p_room;
    UPDATE live_participant_sessions SET left_at = now(), updated_at = now()
    WHERE room_name = p_room AND left_at IS NULL;
    UPDATE live_streams SET viewer_count = 0, viewer_count_written_at = clock_timestamp()
    WHERE id = p_room AND viewer_count <> 0;
END
$$;

-- Ends a live stream because LiveKit's room is gone: room_finished (p_grace
-- NULL), or the reconciler once the room has been missing for p_grace.
-- Returns whether it ended the stream now; an ended stream's room is marked
-- closed either way.
CREATE FUNCTION live_finish_stream(p_room TEXT, p_grace INTERVAL) RETURNS BOOLEAN
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE live_streams
    SET is_live = false, ended_at = now(), room_closed_at = coalesce(room_closed_at, now())
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

-- /live/end: ends the stream if p_caller is its streamer (a second end keeps
-- the first ended_at). The row lock makes a concurrent end or retried start
-- wait and then read the row as this one left it. streamer_id is NULL for an
-- unknown room.
CREATE FUNCTION live_end_stream(
    p_room TEXT,
    p_caller UUID,
    OUT streamer_id UUID,
    OUT ended_at TIMESTAMPTZ,
    OUT room_closed BOOLEAN
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_live BOOLEAN;
BEGIN
    SELECT s.streamer_id, s.is_live, s.ended_at, s.room_closed_at IS NOT NULL
    INTO streamer_id, v_live, ended_at, room_closed
    FROM live_streams s WHERE s.id = p_room
    FOR NO KEY UPDATE;
    IF NOT FOUND OR streamer_id <> p_caller OR NOT v_live THEN
        RETURN;
    END IF;
    UPDATE live_streams s SET is_live = false, ended_at = now() WHERE s.id = p_room
    RETURNING s.ended_at INTO ended_at;
    PERFORM live_close_counts(p_room);
END
$$;

-- The scheduled flusher: every live room whose copy is stale and a second
-- old, in one statement. Returns the rooms written.
CREATE FUNCTION live_flush_viewer_counts() RETURNS INTEGER
LANGUAGE plpgsql
AS $$
DECLARE
    v_written INTEGER;
BEGIN
    UPDATE live_streams s
    SET viewer_count = c.n, viewer_count_written_at = clock_timestamp()
    FROM (SELECT room_name, sum(viewers)::int AS n FROM live_viewer_counts GROUP BY room_name) c
    WHERE s.id = c.room_name AND s.is_live AND s.viewer_count <> c.n
      AND s.viewer_count_written_at <= clock_timestamp() - interval '1 second';
    GET DIAGNOSTICS v_written = ROW_COUNT;
    RETURN v_written;
END
$$;

DO $$
DECLARE
    grantee TEXT;
    object TEXT;
BEGIN
    FOREACH grantee IN ARRAY ARRAY['PUBLIC', 'anon', 'authenticated'] LOOP
        IF grantee = 'PUBLIC' OR EXISTS (SELECT FROM pg_roles WHERE rolname = grantee) THEN
            EXECUTE format('REVOKE ALL ON TABLE live_presence, live_viewer_counts FROM %s', grantee);
            FOREACH object IN ARRAY ARRAY[
                'live_viewer_count(TEXT)',
                'live_session_change(TEXT, TEXT, TEXT, BOOLEAN, TEXT)',
                'live_presence_change(TEXT, TEXT, TEXT, BOOLEAN, TEXT)',
                'live_count_add(TEXT, INTEGER, INTEGER)',
                'live_write_viewer_count(TEXT)',
                'live_participant_event(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, UUID, BOOLEAN)',
                'live_finish_stream(TEXT, INTERVAL)',
                'live_end_stream(TEXT, UUID)',
                'live_sync_sessions(TEXT, TIMESTAMPTZ, TEXT[], TEXT[], BOOLEAN[])',
                'live_close_counts(TEXT)',
                'live_flush_viewer_counts()'
            ] LOOP
                EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %s', object, grantee);
            END LOOP;
        END IF;
    END LOOP;
END
$$;
GRANT EXECUTE ON FUNCTION
    live_viewer_count(TEXT),
    live_session_change(TEXT, TEXT, TEXT, BOOLEAN, TEXT),
    live_presence_change(TEXT, TEXT, TEXT, BOOLEAN, TEXT),
    live_count_add(TEXT, INTEGER, INTEGER),
    live_write_viewer_count(TEXT),
    live_participant_event(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, UUID, BOOLEAN),
    live_finish_stream(TEXT, INTERVAL),
    live_end_stream(TEXT, UUID),
    live_sync_sessions(TEXT, TIMESTAMPTZ, TEXT[], TEXT[], BOOLEAN[]),
    live_close_counts(TEXT),
    live_flush_viewer_counts()
TO live_api;
