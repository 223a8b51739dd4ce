-- A leave reported by an earlier instance of the room (a `room.sid` other
-- than the one Postgres keeps) was ignored with every other event of that
-- instance, though the session it ends was counted while that instance was
-- the room's. A viewer of the first instance whose leave was delivered
-- after a retried start recorded the new instance (LiveKit retries a
-- webhook our 503 refused) stayed counted, their watch time running and a
-- stage turn held, until the reconciler's next run closed the session. A
-- leave (or a drop) of a session still open in this room is now applied
-- whichever instance reports it: participant sids are unique, so it can be
-- no other session's. Joins of another instance still count nowhere (0034).
--
-- Whole body of 0034's live_participant_event; what changed is marked.

CREATE OR REPLACE FUNCTION live_participant_event(
    p_event_id TEXT,
    p_room TEXT,
    p_room_sid TEXT,
    p_change TEXT,
    p_sid TEXT,
    p_identity TEXT,
    p_user UUID,
    p_hidden BOOLEAN,
    p_name TEXT,
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
DECLARE
    v_room_sid TEXT;
    v_other_instance BOOLEAN;
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
    IF NOT FOUND THEN
        outcome := 'ignored';
        streamer_id := NULL;
        RETURN;
    END IF;
    -- Changed: a leave of a session still open here is this room's,
    -- whichever instance reports it (participant sids are unique).
    v_other_instance := p_room_sid <> '' AND v_room_sid IS NOT NULL AND v_room_sid <> p_room_sid
        AND NOT (p_change <> 'join' AND EXISTS (
            SELECT FROM live_participant_sessions ps
            WHERE ps.room_name = p_room AND ps.sid = p_sid AND ps.left_at IS NULL));
    IF p_user IS NOT NULL THEN
        SELECT r.banned, r.muted INTO banned, muted
        FROM live_room_restrictions r WHERE r.room_name = p_room AND r.user_id = p_user;
    END IF;
    banned := coalesce(banned, false);
    muted := coalesce(muted, false);
    hand_raised := false;
    invited := false;
    on_stage := false;
    IF NOT is_live THEN
        outcome := 'ignored';
        RETURN;
    END IF;
    IF NOT v_other_instance THEN
        PERFORM live_session_change(
            p_room, p_sid, p_identity, NOT p_hidden AND p_identity <> streamer_id::text, p_change, p_name);
    END IF;
    IF p_user IS NOT NULL THEN
        SELECT g.hand_raised_at IS NOT NULL, g.invited_at IS NOT NULL, g.on_stage_since IS NOT NULL
        INTO hand_raised, invited, on_stage
        FROM live_stage g WHERE g.room_name = p_room AND g.user_id = p_user;
        hand_raised := coalesce(hand_raised, false);
        invited := coalesce(invited, false);
        on_stage := coalesce(on_stage, false);
    END IF;
    IF v_other_instance THEN
        outcome := 'ignored';
        RETURN;
    END IF;
    count_written := live_write_viewer_count(p_room);
    outcome := 'applied';
END
$$;
-- CREATE OR REPLACE keeps the privileges 0012 set.
