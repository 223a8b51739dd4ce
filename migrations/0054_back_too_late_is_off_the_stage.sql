-- A guest whose connection was lost keeps their turn (a viewer their hand
-- or invitation) for STAGE_RETURN_SECONDS (0028), and the reconciler's run
-- each minute ends what has lapsed. A guest who came back after their time
-- but before that run found the turn still theirs: the join cleared the
-- away mark whatever its age, so "60 seconds to come back" was up to two
-- minutes, and a guest the streamer thought gone could be back on camera.
-- A join now ends a standing whose time to return had run out when the
-- join happened, as the reconciler would have, and only clears the mark of
-- one back in time.
--
-- The database does not know the setting. The webhook passes it, with the
-- time LiveKit created the join event (a join can wait in LiveKit's queue
-- for the room behind others; it is not late for that), to a new
-- live_participant_event. The reconciler passes it, with the time LiveKit
-- says each listed participant joined, to a new live_sync_sessions: a
-- session it finds listed that no webhook told of (a join LiveKit dropped)
-- is a join as of then. Each keeps the moment away marks must be younger
-- than (live.stage_return_cutoff, epoch seconds, set local: safe behind a
-- transaction-mode pooler) for live_presence_change to read, and sets it
-- only for a join. The earlier signatures stay for functions deployed
-- before this and set nothing: no limit, as before. A session the
-- reconciler closed and reopens was never gone, and keeps the turn.
--
-- Whole body of 0038's live_presence_change; what changed is marked.

CREATE OR REPLACE FUNCTION live_presence_change(
    p_room TEXT,
    p_sid TEXT,
    p_identity TEXT,
    p_counted BOOLEAN,
    p_change TEXT,
    p_name TEXT,
    OUT delta INTEGER,
    OUT first_time BOOLEAN,
    OUT arrived DOUBLE PRECISION,
    OUT watched DOUBLE PRECISION
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_session live_participant_sessions%ROWTYPE;
    v_was_present BOOLEAN;
    v_is_present BOOLEAN := NULL;
    v_sessions INTEGER;
    v_joined_at TIMESTAMPTZ;
    -- Changed: who was away since before this lost their standing, if the
    -- caller said (live.stage_return_cutoff, epoch seconds).
    v_cutoff TIMESTAMPTZ := to_timestamp(nullif(current_setting('live.stage_return_cutoff', true), '')::DOUBLE PRECISION);
    v_lapsed BOOLEAN;
BEGIN
    delta := 0;
    first_time := false;
    arrived := 0;
    watched := 0;
    LOOP
        SELECT * INTO v_session FROM live_participant_sessions
        WHERE room_name = p_room AND sid = p_sid
        FOR UPDATE;
        EXIT WHEN FOUND;
        INSERT INTO live_participant_sessions (room_name, sid, identity, counted, joined, left_at)
        VALUES (p_room, p_sid, p_identity, p_counted, p_change IN ('join', 'reopen'),
                CASE WHEN p_change IN ('join', 'reopen') THEN NULL ELSE now() END)
        ON CONFLICT (room_name, sid) DO NOTHING;
        IF FOUND THEN
            v_was_present := false;
            v_is_present := p_change IN ('join', 'reopen');
            EXIT;
        END IF;
    END LOOP;
    IF v_is_present IS NULL THEN
        v_was_present := v_session.joined AND v_session.left_at IS NULL;
        IF p_change = 'join' THEN
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
                closed_by_reconciler = (p_change = 'close' AND left_at IS NULL)
                                       OR (closed_by_reconciler AND p_change = 'close')
            WHERE room_name = p_room AND sid = p_sid;
            v_is_present := false;
        END IF;
    END IF;

    -- The leave a reconciler's close stood in for, told late and chosen,
    -- ends what the close kept for a return (below): only the away turn that
    -- close began, not a newer drop's (0032).
    IF p_change = 'leave' AND v_session.closed_by_reconciler
       AND NOT EXISTS (SELECT FROM live_presence WHERE room_name = p_room AND identity = p_identity) THEN
        UPDATE live_stage
        SET hand_raised_at = NULL, invited_at = NULL, on_stage_since = NULL, away_since = NULL
        WHERE room_name = p_room AND user_id = live_identity_user(p_identity)
          AND away_since <= v_session.left_at;
    END IF;
    IF v_was_present = v_is_present OR NOT coalesce(v_session.counted, p_counted) THEN
        RETURN;
    END IF;
    IF v_is_present THEN
        INSERT INTO live_presence AS p (room_name, identity, sessions, display_name)
        VALUES (p_room, p_identity, 1, nullif(p_name, ''))
        ON CONFLICT (room_name, identity) DO UPDATE
        SET sessions = p.sessions + 1, display_name = coalesce(EXCLUDED.display_name, p.display_name)
        RETURNING sessions, joined_at INTO v_sessions, v_joined_at;
        IF v_sessions = 1 THEN
            delta := 1;
            arrived := extract(epoch FROM v_joined_at);
            INSERT INTO live_viewers_seen (room_name, identity) VALUES (p_room, p_identity)
            ON CONFLICT DO NOTHING;
            first_time := FOUND;
            -- Changed: back within the time to return, their turn goes on
            -- (0028); joined after it, before the reconciler came by, it is
            -- over, as that run would have ended it.
            v_lapsed := v_cutoff IS NOT NULL;
            UPDATE live_stage
            SET hand_raised_at = CASE WHEN v_lapsed AND away_since < v_cutoff THEN NULL ELSE hand_raised_at END,
                invited_at = CASE WHEN v_lapsed AND away_since < v_cutoff THEN NULL ELSE invited_at END,
                on_stage_since = CASE WHEN v_lapsed AND away_since < v_cutoff THEN NULL ELSE on_stage_since END,
                away_since = NULL
            WHERE room_name = p_room AND user_id = live_identity_user(p_identity) AND away_since IS NOT NULL;
        END IF;
    ELSE
        -- The row is locked, then read, then decided on (0038).
        SELECT p.sessions INTO v_sessions FROM live_presence AS p
        WHERE p.room_name = p_room AND p.identity = p_identity
        FOR UPDATE;
        IF v_sessions > 1 THEN
            UPDATE live_presence SET sessions = sessions - 1
            WHERE room_name = p_room AND identity = p_identity;
        ELSIF v_sessions = 1 THEN
            DELETE FROM live_presence WHERE room_name = p_room AND identity = p_identity
            RETURNING joined_at INTO v_joined_at;
            IF FOUND THEN
                delta := -1;
                arrived := extract(epoch FROM v_joined_at);
                watched := greatest(extract(epoch FROM now() - v_joined_at), 0);
                -- A connection lost is not a choice to leave; the
                -- reconciler ends the turn if they are not back in time.
                -- Nor is a session the reconciler closed, whose leave was
                -- never told.
                IF p_change IN ('drop', 'close') THEN
                    UPDATE live_stage SET away_since = now()
                    WHERE room_name = p_room AND user_id = live_identity_user(p_identity)
                      AND (hand_raised_at IS NOT NULL OR invited_at IS NOT NULL OR on_stage_since IS NOT NULL);
                ELSE
                    UPDATE live_stage
                    SET hand_raised_at = NULL, invited_at = NULL, on_stage_since = NULL, away_since = NULL
                    WHERE room_name = p_room AND user_id = live_identity_user(p_identity)
                      AND (hand_raised_at IS NOT NULL OR invited_at IS NOT NULL OR on_stage_since IS NOT NULL);
                END IF;
            END IF;
        END IF;
    END IF;
END
$$;
-- CREATE OR REPLACE keeps the privileges 0012 set.

CREATE FUNCTION live_participant_event(
    p_event_id TEXT,
    p_room TEXT,
    p_room_sid TEXT,
    p_change TEXT,
    p_sid TEXT,
    p_identity TEXT,
    p_user UUID,
    p_hidden BOOLEAN,
    p_name TEXT,
    p_stage_return DOUBLE PRECISION,
    p_event_at TIMESTAMPTZ,
    OUT outcome TEXT,
    OUT streamer_id UUID,
    OUT is_live BOOLEAN,
    OUT banned BOOLEAN,
    OUT muted BOOLEAN,
    OUT hand_raised BOOLEAN,
    OUT invited BOOLEAN,
    OUT on_stage BOOLEAN,
    OUT count_written INTEGER
)
LANGUAGE plpgsql
AS $$
BEGIN
    -- LiveKit's clock may be ahead of ours: never later than now.
    PERFORM set_config(
        'live.stage_return_cutoff',
        extract(epoch FROM least(now(), coalesce(p_event_at, now())) - make_interval(secs => p_stage_return))::text,
        true);
    SELECT e.outcome, e.streamer_id, e.is_live, e.banned, e.muted, e.hand_raised, e.invited, e.on_stage,
           e.count_written
    INTO outcome, streamer_id, is_live, banned, muted, hand_raised, invited, on_stage, count_written
    FROM live_participant_event(p_event_id, p_room, p_room_sid, p_change, p_sid, p_identity, p_user, p_hidden,
                                p_name) e;
END
$$;

-- As 0026's live_sync_sessions (with 0053's locks), for the reconciler of
-- this release; what changed is marked. The six-argument one calls it with
-- no time to return, so one body holds the locks and the sync.
CREATE FUNCTION live_sync_sessions(
    p_room TEXT,
    p_listed_at TIMESTAMPTZ,
    p_sids TEXT[],
    p_identities TEXT[],
    p_counted BOOLEAN[],
    p_names TEXT[],
    p_joined_at TIMESTAMPTZ[],
    p_stage_return DOUBLE PRECISION
) RETURNS INTEGER
LANGUAGE plpgsql
AS $$
DECLARE
    v_changed INTEGER := 0;
    v_deltas INTEGER[] := array_fill(0, ARRAY[16]);
    v_unique INTEGER[] := array_fill(0, ARRAY[16]);
    v_arrivals DOUBLE PRECISION[] := array_fill(0::float8, ARRAY[16]);
    v_watched DOUBLE PRECISION[] := array_fill(0::float8, ARRAY[16]);
    v RECORD;
    v_session RECORD;
    v_shard INTEGER;
BEGIN
    -- Changed: one sync of a room at a time, then the standing lock (0053).
    IF NOT pg_try_advisory_xact_lock(hashtext('live_sync_sessions'), hashtext(p_room)) THEN
        RETURN 0;
    END IF;
    PERFORM live_room_standing_lock(p_room, false);
    IF NOT EXISTS (SELECT FROM live_streams WHERE id = p_room AND is_live) THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM live_participant_sessions
    WHERE room_name = p_room
      AND ((sid = ANY (p_sids) AND left_at IS NOT NULL AND closed_by_reconciler)
           OR (joined AND left_at IS NULL AND updated_at < p_listed_at AND NOT (sid = ANY (p_sids))))
    ORDER BY sid
    FOR UPDATE;
    FOR v_session IN
        SELECT sid, identity, counted, 'close' AS change, NULL::text AS name, true AS known,
               NULL::timestamptz AS joined_at
        FROM live_participant_sessions
        WHERE room_name = p_room AND joined AND left_at IS NULL
          AND NOT (sid = ANY (p_sids)) AND updated_at < p_listed_at
        UNION ALL
        SELECT listed.sid, listed.identity, listed.counted, 'reopen', listed.name, s.sid IS NOT NULL,
               listed.joined_at
        FROM unnest(p_sids, p_identities, p_counted, p_names, p_joined_at)
             AS listed (sid, identity, counted, name, joined_at)
        LEFT JOIN live_participant_sessions s ON s.room_name = p_room AND s.sid = listed.sid
        WHERE s.sid IS NULL OR (s.left_at IS NOT NULL AND s.closed_by_reconciler)
        ORDER BY 2, 4 DESC, 6, 1
    LOOP
        -- Changed: a listed session no webhook told of is a join as of when
        -- LiveKit says it joined; others set no limit.
        PERFORM set_config(
            'live.stage_return_cutoff',
            CASE WHEN v_session.change = 'reopen' AND NOT v_session.known AND p_stage_return IS NOT NULL THEN
                -- now(): after the room's listing; LiveKit's clock may be ahead.
                extract(epoch FROM least(now(), coalesce(v_session.joined_at, now()))
                                   - make_interval(secs => p_stage_return))::text
                 ELSE '' END,
            true);
        SELECT * INTO v FROM live_presence_change(
            p_room, v_session.sid, v_session.identity, v_session.counted, v_session.change, v_session.name);
        IF v.delta <> 0 THEN
            v_shard := (hashtext(v_session.identity) & 15) + 1;
            v_deltas[v_shard] := v_deltas[v_shard] + v.delta;
            v_unique[v_shard] := v_unique[v_shard] + v.first_time::int;
            v_arrivals[v_shard] := v_arrivals[v_shard] + v.delta * v.arrived;
            v_watched[v_shard] := v_watched[v_shard] + v.watched;
            v_changed := v_changed + 1;
        END IF;
    END LOOP;
    PERFORM 1 FROM live_viewer_counts WHERE room_name = p_room ORDER BY shard FOR UPDATE;
    FOR v_shard IN 1 .. 16 LOOP
        IF v_deltas[v_shard] < 0 OR (v_deltas[v_shard] = 0 AND (v_unique[v_shard] <> 0 OR v_watched[v_shard] <> 0)) THEN
            PERFORM live_count_add(p_room, v_shard - 1, v_deltas[v_shard], v_unique[v_shard],
                                   v_arrivals[v_shard], v_watched[v_shard]);
        END IF;
    END LOOP;
    FOR v_shard IN 1 .. 16 LOOP
        IF v_deltas[v_shard] > 0 THEN
            PERFORM live_count_add(p_room, v_shard - 1, v_deltas[v_shard], v_unique[v_shard],
                                   v_arrivals[v_shard], v_watched[v_shard]);
        END IF;
    END LOOP;
    PERFORM live_write_viewer_count(p_room);
    RETURN v_changed;
END
$$;

CREATE OR REPLACE FUNCTION live_sync_sessions(
    p_room TEXT,
    p_listed_at TIMESTAMPTZ,
    p_sids TEXT[],
    p_identities TEXT[],
    p_counted BOOLEAN[],
    p_names TEXT[]
) RETURNS INTEGER
LANGUAGE sql
AS $$
    SELECT live_sync_sessions(p_room, p_listed_at, p_sids, p_identities, p_counted, p_names,
                              NULL::TIMESTAMPTZ[], NULL::DOUBLE PRECISION);
$$;
-- CREATE OR REPLACE keeps the privileges 0047 set.

CALL live_revoke_from_api_roles(ARRAY[
    'live_participant_event(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, UUID, BOOLEAN, TEXT, DOUBLE PRECISION, TIMESTAMPTZ)',
    'live_sync_sessions(TEXT, TIMESTAMPTZ, TEXT[], TEXT[], BOOLEAN[], TEXT[], TIMESTAMPTZ[], DOUBLE PRECISION)'
]::REGPROCEDURE[]);
GRANT EXECUTE ON FUNCTION
    live_participant_event(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, UUID, BOOLEAN, TEXT, DOUBLE PRECISION, TIMESTAMPTZ),
    live_sync_sessions(TEXT, TIMESTAMPTZ, TEXT[], TEXT[], BOOLEAN[], TEXT[], TIMESTAMPTZ[], DOUBLE PRECISION)
    TO live_api;
