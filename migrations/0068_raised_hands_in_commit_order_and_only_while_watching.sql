-- The streamer pages through the raised hands oldest first, by the time
-- each was raised. A raise was stamped with now(), its transaction's start,
-- though it waits for the room's stage lock before it writes: a raise that
-- began first and waited longest committed after later ones, behind a
-- page's cursor already past it, and a walk through the pages in progress
-- never listed it. The stamp is now taken under that lock, which is held to
-- the commit, so the hands' order is their commit order and a walk lists a
-- late hand on a later page.
--
-- A hand raised by someone not in the room (no presence row: their join not
-- told yet, or never coming) was kept until the stream ended: the list
-- shows only viewers in the room, but every listing read past each such
-- row, and nothing cleared them. Such a raise now starts the away clock
-- (away_since), as a dropped connection does: their join stops it, and the
-- reconciler clears the hand once STAGE_RETURN_SECONDS have passed without
-- one, as it ends every lapsed away turn.
--
-- Whole body of 0060's live_stage_change_under_standing; what changed is
-- marked. CREATE OR REPLACE keeps its privileges.

CREATE OR REPLACE FUNCTION live_stage_change_under_standing(
    p_room TEXT,
    p_actor UUID,
    p_user UUID,
    p_action TEXT,
    p_max_guests INTEGER,
    p_stage_return FLOAT8,
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
    -- An invitation holds the invitee's presence row until it commits,
    -- before their stage row (the order a leave takes them in).
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
            -- Changed: stamped now, under the room's stage lock, which is
            -- held to the commit: hands are stamped in their commit order.
            v_stage.hand_raised_at := clock_timestamp();
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
            -- An invitation whose viewer's time to return ran out is over,
            -- unless their join is recorded (back in time). It ends here as
            -- the reconciler would end it (0060).
            IF v_stage.invited_at IS NOT NULL
               AND v_stage.away_since < now() - make_interval(secs => p_stage_return)
               AND NOT EXISTS (SELECT FROM live_presence p
                               WHERE p.room_name = p_room AND p.identity = p_user::text) THEN
                UPDATE live_stage g SET hand_raised_at = NULL, invited_at = NULL, away_since = NULL
                WHERE g.room_name = p_room AND g.user_id = p_user;
                outcome := 'not_invited';
                RETURN;
            END IF;
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
        -- Changed: a hand raised from outside the room waits for its join.
        IF p_action = 'raise' AND NOT EXISTS (
            SELECT FROM live_presence p WHERE p.room_name = p_room AND p.identity = p_user::text
        ) THEN
            UPDATE live_stage g SET away_since = coalesce(g.away_since, now())
            WHERE g.room_name = p_room AND g.user_id = p_user;
        END IF;
    END IF;
    hand_raised_at := v_stage.hand_raised_at;
    invited_at := v_stage.invited_at;
    on_stage_since := v_stage.on_stage_since;
END
$$;

