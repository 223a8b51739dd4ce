-- Two events of one new session at once (LiveKit's leave overtaking its
-- join) both found no session row and both inserted it: the second failed on
-- the primary key (a 500 to LiveKit, which retries). Now the insert yields to
-- a concurrent one and the event reads the row that won.
CREATE OR REPLACE FUNCTION live_presence_change(p_room TEXT, p_sid TEXT, p_identity TEXT, p_counted BOOLEAN, p_change TEXT)
RETURNS INTEGER
LANGUAGE plpgsql
AS $$
DECLARE
    v_session live_participant_sessions%ROWTYPE;
    v_was_present BOOLEAN;
    v_is_present BOOLEAN := NULL;
    v_sessions INTEGER;
    v_delta INTEGER := 0;
BEGIN
    LOOP
        SELECT * INTO v_session FROM live_participant_sessions
        WHERE room_name = p_room AND sid = p_sid
        FOR UPDATE;
        EXIT WHEN FOUND;
        -- A leave that arrives before its join keeps the session gone. Two
        -- events of one new session at once: one inserts, the other finds
        -- the row on its next look.
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
    END IF;
    IF v_is_present IS NOT NULL THEN
        NULL; -- inserted just now
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
