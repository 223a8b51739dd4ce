-- Two ways a viewer who was gone could keep a stage slot or lose their turn:
--
-- An invitation checked that the invitee was watching without a lock. A
-- viewer who never raised a hand has no stage row for the invitation to
-- lock, so their last leave could commit between the check and the
-- invitation's insert: the leave cleared no row (there was none yet), the
-- invitation committed for someone gone, and their accept put them on stage
-- while absent, holding a guest slot with nothing to end it. The invitation
-- now holds the invitee's presence row (FOR SHARE) until it commits, taken
-- before the stage row as a leave takes them: a leave in progress is waited
-- for and its result read (not watching), or the leave waits and then clears
-- the invitation it finds.
--
-- A session the reconciler closes (its leave webhook was lost) ended the
-- user's turn at once, where the leave it stands for may have been a lost
-- connection: a guest whose drop was not told lost the stage a dropped
-- guest keeps for STAGE_RETURN_SECONDS (0028). The reconciler cannot tell a
-- chosen leave from a lost one, so its close now keeps the stage for that
-- time, as a drop does; the reconciler ends the turn if they are not back,
-- and the leave itself, should it arrive late and say it was chosen.
--
-- And the guest count and the stage listing read only a room's current
-- guests and invitations through partial indexes, not every stage row the
-- room ever had (rows are cleared, never deleted, while a stream is live).
--
-- Whole bodies of 0024's live_stage_change_under_standing and 0028's
-- live_presence_change; what changed is marked.

-- 0024's, the invitee's presence held.
CREATE OR REPLACE FUNCTION live_stage_change_under_standing(
    p_room TEXT,
    p_actor UUID,
    p_user UUID,
    p_action TEXT,
    p_max_guests INTEGER,
    OUT outcome TEXT,
    OUT changed BOOLEAN,
    OUT hand_raised_at TIMESTAMPTZ,
    OUT invited_at TIMESTAMPTZ,
    OUT on_stage_since TIMESTAMPTZ,
    OUT muted BOOLEAN
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_streamer UUID;
    v_live BOOLEAN;
    v_actor_banned BOOLEAN;
    v_user_banned BOOLEAN;
    v_stage live_stage%ROWTYPE;
    v_guests INTEGER;
    v_watching BOOLEAN;
BEGIN
    changed := false;
    SELECT s.streamer_id, s.is_live INTO v_streamer, v_live FROM live_streams s WHERE s.id = p_room;
    IF NOT FOUND THEN
        outcome := 'not_found';
        RETURN;
    END IF;
    IF p_action IN ('invite', 'remove') AND p_actor <> v_streamer AND p_actor <> p_user THEN
        outcome := 'not_host';
        RETURN;
    END IF;
    IF p_action = 'invite' AND p_actor <> v_streamer THEN
        outcome := 'not_host';
        RETURN;
    END IF;
    IF p_action IN ('raise', 'lower', 'accept', 'decline') AND p_actor <> p_user THEN
        RAISE EXCEPTION 'stage action % is the user''s own', p_action;
    END IF;
    IF p_user = v_streamer THEN
        outcome := 'host';
        RETURN;
    END IF;
    SELECT coalesce(bool_or(r.banned) FILTER (WHERE r.user_id = p_actor), false),
           coalesce(bool_or(r.banned) FILTER (WHERE r.user_id = p_user), false),
           coalesce(bool_or(r.muted) FILTER (WHERE r.user_id = p_user), false)
    INTO v_actor_banned, v_user_banned, muted
    FROM live_room_restrictions r WHERE r.room_name = p_room AND r.user_id IN (p_actor, p_user);
    IF v_actor_banned OR (v_user_banned AND p_action NOT IN ('lower', 'decline', 'remove')) THEN
        outcome := 'banned';
        RETURN;
    END IF;
    IF NOT v_live THEN
        outcome := 'not_live';
        RETURN;
    END IF;

    PERFORM pg_advisory_xact_lock(hashtext('live_stage'), hashtext(p_room));
    -- Changed: an invitation holds the invitee's presence row until it
    -- commits, before their stage row (the order a leave takes them in).
    IF p_action = 'invite' THEN
        PERFORM FROM live_presence p WHERE p.room_name = p_room AND p.identity = p_user::text
        FOR SHARE;
        v_watching := FOUND;
    END IF;
    SELECT * INTO v_stage FROM live_stage g WHERE g.room_name = p_room AND g.user_id = p_user
    FOR UPDATE;
    IF NOT FOUND THEN
        v_stage.room_name := p_room;
        v_stage.user_id := p_user;
        v_stage.was_on_stage := false;
    END IF;
    outcome := 'ok';
    CASE p_action
    WHEN 'raise' THEN
        IF v_stage.hand_raised_at IS NULL AND v_stage.invited_at IS NULL AND v_stage.on_stage_since IS NULL THEN
            v_stage.hand_raised_at := now();
            changed := true;
        END IF;
    WHEN 'lower' THEN
        IF v_stage.hand_raised_at IS NOT NULL THEN
            v_stage.hand_raised_at := NULL;
            changed := true;
        END IF;
    WHEN 'invite' THEN
        IF v_stage.on_stage_since IS NULL AND v_stage.invited_at IS NULL THEN
            IF NOT v_watching THEN
                outcome := 'not_watching';
                RETURN;
            END IF;
            SELECT count(*) INTO v_guests FROM live_stage g
            WHERE g.room_name = p_room AND g.on_stage_since IS NOT NULL;
            IF v_guests >= p_max_guests THEN
                outcome := 'stage_full';
                RETURN;
            END IF;
            v_stage.invited_at := now();
            changed := true;
        END IF;
    WHEN 'accept' THEN
        IF v_stage.on_stage_since IS NULL THEN
            IF v_stage.invited_at IS NULL THEN
                outcome := 'not_invited';
                RETURN;
            END IF;
            SELECT count(*) INTO v_guests FROM live_stage g
            WHERE g.room_name = p_room AND g.on_stage_since IS NOT NULL;
            IF v_guests >= p_max_guests THEN
                outcome := 'stage_full';
                RETURN;
            END IF;
            IF NOT v_stage.was_on_stage THEN
                INSERT INTO live_stream_stats AS t (room_name, stage_guests) VALUES (p_room, 1)
                ON CONFLICT (room_name) DO UPDATE SET stage_guests = t.stage_guests + 1;
            END IF;
            v_stage.on_stage_since := now();
            v_stage.invited_at := NULL;
            v_stage.hand_raised_at := NULL;
            v_stage.was_on_stage := true;
            changed := true;
        END IF;
    WHEN 'decline' THEN
        IF v_stage.invited_at IS NOT NULL THEN
            v_stage.invited_at := NULL;
            v_stage.hand_raised_at := NULL;
            changed := true;
        END IF;
    WHEN 'remove' THEN
        IF v_stage.on_stage_since IS NOT NULL OR v_stage.invited_at IS NOT NULL THEN
            v_stage.on_stage_since := NULL;
            v_stage.invited_at := NULL;
            v_stage.hand_raised_at := NULL;
            changed := true;
        END IF;
    ELSE
        RAISE EXCEPTION 'unknown stage action %', p_action;
    END CASE;
    IF changed THEN
        INSERT INTO live_stage AS g (room_name, user_id, hand_raised_at, invited_at, on_stage_since, was_on_stage)
        VALUES (p_room, p_user, v_stage.hand_raised_at, v_stage.invited_at, v_stage.on_stage_since,
                v_stage.was_on_stage)
        ON CONFLICT (room_name, user_id) DO UPDATE
        SET hand_raised_at = EXCLUDED.hand_raised_at, invited_at = EXCLUDED.invited_at,
            on_stage_since = EXCLUDED.on_stage_since, was_on_stage = EXCLUDED.was_on_stage;
    END IF;
    hand_raised_at := v_stage.hand_raised_at;
    invited_at := v_stage.invited_at;
    on_stage_since := v_stage.on_stage_since;
END
$$;
-- CREATE OR REPLACE keeps the privileges 0022 set.

-- 0028's, the reconciler's close keeping the stage as a drop does.
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

    -- Changed: the leave a reconciler's close stood in for, told late and
    -- chosen, ends what the close kept for a return (below).
    IF p_change = 'leave' AND v_session.closed_by_reconciler
       AND NOT EXISTS (SELECT FROM live_presence WHERE room_name = p_room AND identity = p_identity) THEN
        UPDATE live_stage
        SET hand_raised_at = NULL, invited_at = NULL, on_stage_since = NULL, away_since = NULL
        WHERE room_name = p_room AND user_id = live_identity_user(p_identity) AND away_since IS NOT NULL;
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
            -- Back within the time to return, their turn goes on (0028).
            UPDATE live_stage SET away_since = NULL
            WHERE room_name = p_room AND user_id = live_identity_user(p_identity) AND away_since IS NOT NULL;
        END IF;
    ELSE
        UPDATE live_presence SET sessions = sessions - 1
        WHERE room_name = p_room AND identity = p_identity AND sessions > 1;
        IF NOT FOUND THEN
            DELETE FROM live_presence WHERE room_name = p_room AND identity = p_identity
            RETURNING joined_at INTO v_joined_at;
            IF FOUND THEN
                delta := -1;
                arrived := extract(epoch FROM v_joined_at);
                watched := greatest(extract(epoch FROM now() - v_joined_at), 0);
                -- A connection lost is not a choice to leave; the
                -- reconciler ends the turn if they are not back in time.
                -- Changed: nor is a session the reconciler closed, whose
                -- leave was never told.
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

CREATE INDEX live_stage_guests_idx ON live_stage (room_name) WHERE on_stage_since IS NOT NULL;
CREATE INDEX live_stage_invited_idx ON live_stage (room_name) WHERE invited_at IS NOT NULL;
