-- A post, a tap or a stage change could land after the end or the ban that
-- should have refused it.
--
-- Each of them read "the stream is live, the caller is not banned" in one
-- statement and wrote in a later one. /live/chat took three round trips for
-- it (the room's access, the rate-limit hit, the insert): a ban or an end
-- committing in between left a message stored, answered 201 and broadcast
-- after the streamer was told the ban stood, or counted in an ended stream's
-- final figures. live_react and live_stage_change had the same gap inside one
-- function (a tap counted after the end; a guest accepted onto the stage
-- after their ban emptied it, holding a slot).
--
-- Now each room has a standing lock, a transaction-scoped advisory lock on
-- (hashtext('live_room_standing'), hashtext(room)): what the end or a ban
-- changes is changed under it exclusively, and what they forbid is checked
-- under it shared. A post, a tap or a stage change takes it shared before it
-- reads, so its reads (each PL/pgSQL statement takes a new snapshot) see
-- every end and restriction committed before it, and an end or a
-- restriction change waits for those in flight (milliseconds: they hold it
-- only until their own commit) and is ordered after them. Holders of the
-- shared lock never wait for each other, and no row is written for it, so a
-- busy room's taps and posts do not queue behind one another.
--
-- Triggers take the exclusive side, so no writer of is_live or of
-- live_room_restrictions can forget it. No deadlock: an end holds only its
-- stream row (FOR NO KEY UPDATE) when it waits, which the holders' foreign
-- key checks (FOR KEY SHARE) do not conflict with; a restriction change
-- holds nothing yet (its trigger runs before the row is written).

CREATE FUNCTION live_room_standing_lock(p_room TEXT, p_exclusive BOOLEAN) RETURNS VOID
LANGUAGE plpgsql
AS $$
BEGIN
    IF p_exclusive THEN
        PERFORM pg_advisory_xact_lock(hashtext('live_room_standing'), hashtext(p_room));
    ELSE
        PERFORM pg_advisory_xact_lock_shared(hashtext('live_room_standing'), hashtext(p_room));
    END IF;
END
$$;

CREATE FUNCTION live_stream_end_takes_standing() RETURNS TRIGGER
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM live_room_standing_lock(NEW.id, true);
    RETURN NULL;
END
$$;
CREATE TRIGGER live_stream_end_takes_standing
AFTER UPDATE OF is_live ON live_streams
FOR EACH ROW WHEN (OLD.is_live AND NOT NEW.is_live) EXECUTE FUNCTION live_stream_end_takes_standing();

CREATE FUNCTION live_restriction_takes_standing() RETURNS TRIGGER
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM live_room_standing_lock(NEW.room_name, true);
    RETURN NEW;
END
$$;
CREATE TRIGGER live_restriction_takes_standing
BEFORE INSERT OR UPDATE ON live_room_restrictions
FOR EACH ROW EXECUTE FUNCTION live_restriction_takes_standing();

-- /live/chat in one round trip: under the standing lock, the stream and the
-- caller's restrictions, then the rate-limit hit, then the insert under the
-- chat-order lock of 0017. outcome: 'posted' (the message's columns are
-- set), 'not_found', 'ended', 'banned', 'muted' or 'rate_limited'
-- (retry_after is set). Refusals do not count against the limit, as before.
CREATE FUNCTION live_chat_say(
    p_room TEXT,
    p_user UUID,
    p_text TEXT,
    p_limit_key TEXT,
    p_window_seconds FLOAT8,
    p_max BIGINT,
    OUT outcome TEXT,
    OUT retry_after BIGINT,
    OUT id UUID,
    OUT room_name TEXT,
    OUT user_id UUID,
    OUT text TEXT,
    OUT created_at TIMESTAMPTZ,
    OUT seq BIGINT
)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
DECLARE
    v_live BOOLEAN;
    v_banned BOOLEAN;
    v_muted BOOLEAN;
BEGIN
    PERFORM live_room_standing_lock(p_room, false);
    SELECT s.is_live, coalesce(r.banned, false), coalesce(r.muted, false)
    INTO v_live, v_banned, v_muted
    FROM live_streams AS s
    LEFT JOIN live_room_restrictions AS r ON r.room_name = s.id AND r.user_id = p_user
    WHERE s.id = p_room;
    IF NOT FOUND THEN
        outcome := 'not_found';
    ELSIF NOT v_live THEN
        outcome := 'ended';
    ELSIF v_banned THEN
        outcome := 'banned';
    ELSIF v_muted THEN
        outcome := 'muted';
    END IF;
    IF outcome IS NOT NULL THEN
        RETURN;
    END IF;
    retry_after := rate_limit_hit(p_limit_key, p_window_seconds, p_max);
    IF retry_after IS NOT NULL THEN
        outcome := 'rate_limited';
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(1818782568, hashtext(p_room));
    INSERT INTO live_messages AS m (room_name, user_id, text) VALUES (p_room, p_user, p_text)
    RETURNING m.id, m.room_name, m.user_id, m.text, m.created_at, m.seq
    INTO id, room_name, user_id, text, created_at, seq;
    outcome := 'posted';
END
$$;

-- Taps and stage changes keep their bodies (0012); each is now reached
-- through a function of its old name that takes the standing lock first, so
-- every read of the body happens under it.
ALTER FUNCTION live_react(TEXT, UUID, TEXT, TEXT, FLOAT8, BIGINT, INTERVAL)
    RENAME TO live_react_under_standing;
CREATE FUNCTION live_react(
    p_room TEXT,
    p_user UUID,
    p_kind TEXT,
    p_limit_key TEXT,
    p_window_seconds FLOAT8,
    p_max BIGINT,
    p_interval INTERVAL,
    OUT retry_after BIGINT,
    OUT streamer_id UUID,
    OUT is_live BOOLEAN,
    OUT banned BOOLEAN,
    OUT counts JSONB,
    OUT totals JSONB
)
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM live_room_standing_lock(p_room, false);
    SELECT * INTO retry_after, streamer_id, is_live, banned, counts, totals
    FROM live_react_under_standing(p_room, p_user, p_kind, p_limit_key, p_window_seconds, p_max, p_interval);
END
$$;

ALTER FUNCTION live_stage_change(TEXT, UUID, UUID, TEXT, INTEGER)
    RENAME TO live_stage_change_under_standing;
CREATE FUNCTION live_stage_change(
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
BEGIN
    PERFORM live_room_standing_lock(p_room, false);
    SELECT * INTO outcome, changed, hand_raised_at, invited_at, on_stage_since, muted
    FROM live_stage_change_under_standing(p_room, p_actor, p_user, p_action, p_max_guests);
END
$$;

-- live_chat_post (0017) stays for the functions deployed before this
-- migration, which check the room in a statement of their own; this code
-- posts with live_chat_say.

CALL live_revoke_from_api_roles(ARRAY[
    'live_room_standing_lock(TEXT, BOOLEAN)',
    'live_stream_end_takes_standing()',
    'live_restriction_takes_standing()',
    'live_chat_say(TEXT, UUID, TEXT, TEXT, FLOAT8, BIGINT)',
    'live_react(TEXT, UUID, TEXT, TEXT, FLOAT8, BIGINT, INTERVAL)',
    'live_stage_change(TEXT, UUID, UUID, TEXT, INTEGER)'
]::REGPROCEDURE[]);
GRANT EXECUTE ON FUNCTION
    live_room_standing_lock(TEXT, BOOLEAN),
    live_chat_say(TEXT, UUID, TEXT, TEXT, FLOAT8, BIGINT),
    live_react(TEXT, UUID, TEXT, TEXT, FLOAT8, BIGINT, INTERVAL),
    live_stage_change(TEXT, UUID, UUID, TEXT, INTEGER)
TO live_api;
