-- A mute or unmute could tell LiveKit a place on the stage older than the
-- database's. Moderation was one statement: the restriction's upsert, the
-- record, and a read of the user's stage row for the answer. A restriction
-- change takes the room's standing lock exclusively (0022), in a trigger, so
-- it waits for stage changes in flight; but the statement's read of the
-- stage used the snapshot taken before that wait. An unmute waiting for the
-- streamer's removal of that guest answered (and told LiveKit) "on stage",
-- giving the removed guest their camera back; a mute waiting for an accept
-- told LiveKit "not on stage", and LiveKit unpublished the new guest's
-- tracks. The follow-up re-read repaired it one round trip later when
-- LiveKit answered in time, and otherwise the reconciler, a minute later.
--
-- Now moderation is a function whose read of the stage is a statement of its
-- own, after the upsert, so its snapshot is taken once the standing lock is
-- held: every stage change that committed before it is seen, and every later
-- one waits for this commit and tells LiveKit itself. One round trip, as
-- before.

CREATE FUNCTION live_moderate(
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

CALL live_revoke_from_api_roles(ARRAY[
    'live_moderate(TEXT, UUID, BOOLEAN, BOOLEAN, UUID, TEXT)'
]::REGPROCEDURE[]);
GRANT EXECUTE ON FUNCTION live_moderate(TEXT, UUID, BOOLEAN, BOOLEAN, UUID, TEXT) TO live_api;
