-- A kick removed the participant from the room and left their place on the
-- stage to their leave's webhook, which ends a turn only on the last
-- session's leave. A kicked guest who came straight back (the token they had,
-- or a new one, minted on stage since Postgres still said so) and whose new
-- join was applied before the old session's leave kept the stage, camera
-- and microphone included, until the host noticed. The kick now ends their
-- turn, invitation and raised hand in the same statement, under the standing
-- lock the restriction's upsert takes, as a ban's trigger does; they may
-- come back as a viewer.
--
-- Whole body of 0040's live_moderate; what changed is marked.

CREATE OR REPLACE FUNCTION live_moderate(
    p_room TEXT,
    p_user UUID,
    p_banned BOOLEAN,
    p_muted BOOLEAN,
    p_moderator UUID,
    p_action TEXT,
    OUT banned BOOLEAN,
    OUT muted BOOLEAN,
    OUT at_unix_seconds BIGINT,
    OUT hand_raised BOOLEAN,
    OUT invited BOOLEAN,
    OUT on_stage BOOLEAN
)
LANGUAGE plpgsql
AS $$
BEGIN
    -- NULL leaves a flag as it is.
    INSERT INTO live_room_restrictions AS r (room_name, user_id, banned, muted)
    VALUES (p_room, p_user, coalesce(p_banned, false), coalesce(p_muted, false))
    ON CONFLICT (room_name, user_id) DO UPDATE
    SET banned = coalesce(p_banned, r.banned), muted = coalesce(p_muted, r.muted), updated_at = now()
    RETURNING r.banned, r.muted INTO banned, muted;
    INSERT INTO live_moderation_actions (room_name, moderator_id, target_id, action)
    VALUES (p_room, p_moderator, p_user, p_action);
    -- The second of the action, rounded down (a cast would round half up),
    -- read once the row is written, so after the standing lock a ban may
    -- wait for: the statement's start (now()) would leave out the tokens
    -- checked while it waited.
    at_unix_seconds := floor(extract(epoch FROM clock_timestamp()))::int8;
    -- Changed: a kick ends the user's place on the stage, as a ban does (its
    -- trigger); they may come back, as a viewer.
    IF p_action = 'kick' THEN
        UPDATE live_stage AS g
        SET hand_raised_at = NULL, invited_at = NULL, on_stage_since = NULL, away_since = NULL
        WHERE g.room_name = p_room AND g.user_id = p_user
          AND (g.hand_raised_at IS NOT NULL OR g.invited_at IS NOT NULL
               OR g.on_stage_since IS NOT NULL OR g.away_since IS NOT NULL);
    END IF;
    -- A new snapshot, taken under the standing lock; a ban's trigger has
    -- emptied the user's stage by now.
    SELECT g.hand_raised_at IS NOT NULL, g.invited_at IS NOT NULL, g.on_stage_since IS NOT NULL
    INTO hand_raised, invited, on_stage
    FROM live_stage AS g
    WHERE g.room_name = p_room AND g.user_id = p_user;
    hand_raised := NOT banned AND coalesce(hand_raised, false);
    invited := NOT banned AND coalesce(invited, false);
    on_stage := NOT banned AND coalesce(on_stage, false);
END
$$;
-- CREATE OR REPLACE keeps the privileges 0040 set.
