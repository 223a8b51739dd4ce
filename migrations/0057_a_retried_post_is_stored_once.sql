-- A post whose answer never reached the app (cut off at its deadline after
-- its commit, or lost on a mobile network) was stored again when the app
-- retried it, and the room saw the message twice. A post may now name its
-- message's id: a UUID the app makes once per message and sends on every
-- attempt. A repeat (the same id, user, room and text) finds the message
-- stored and answers it: it spends no rate limit, and nothing that came
-- after it (an end, a ban, a mute) refuses it, since it was stored before.
-- An id of any other message, or of one deleted since, is refused
-- ('id_taken'). Two attempts in flight at once store it once: the second's
-- insert waits for the first's commit and then finds it. Without an id, a
-- post is as before.
--
-- Whole body of 0022's live_chat_say, with p_id; what changed is marked.
-- The six-argument function stays for the binaries of the release before.

-- What a post naming p_id finds stored: 'repeated' with the message, or
-- 'id_taken' with nothing, or a NULL outcome when no message has that id.
CREATE FUNCTION live_chat_stored(
    p_id UUID,
    p_room TEXT,
    p_user UUID,
    p_text TEXT,
    OUT outcome TEXT,
    OUT id UUID,
    OUT room_name TEXT,
    OUT user_id UUID,
    OUT text TEXT,
    OUT created_at TIMESTAMPTZ,
    OUT seq BIGINT
)
LANGUAGE plpgsql
STABLE
AS $$
#variable_conflict use_column
BEGIN
    SELECT m.id, m.room_name, m.user_id, m.text, m.created_at, m.seq
    INTO id, room_name, user_id, text, created_at, seq
    FROM live_messages AS m
    WHERE m.id = p_id AND m.room_name = p_room AND m.user_id = p_user
      AND m.text = p_text AND m.deleted_at IS NULL;
    IF FOUND THEN
        outcome := 'repeated';
    ELSIF EXISTS (SELECT FROM live_messages AS m WHERE m.id = p_id) THEN
        outcome := 'id_taken';
    END IF;
END
$$;

CREATE FUNCTION live_chat_say(
    p_room TEXT,
    p_user UUID,
    p_text TEXT,
    p_limit_key TEXT,
    p_window_seconds FLOAT8,
    p_max BIGINT,
    p_id UUID,
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
    -- Changed: a repeat answers what is stored, before any check.
    IF p_id IS NOT NULL THEN
        SELECT * INTO outcome, id, room_name, user_id, text, created_at, seq
        FROM live_chat_stored(p_id, p_room, p_user, p_text);
        IF outcome IS NOT NULL THEN
            RETURN;
        END IF;
    END IF;
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
    -- Changed: the app's id when it named one; an attempt in flight beside
    -- this one that committed it first leaves nothing inserted here.
    INSERT INTO live_messages AS m (id, room_name, user_id, text)
    VALUES (coalesce(p_id, gen_random_uuid()), p_room, p_user, p_text)
    ON CONFLICT ON CONSTRAINT live_messages_pkey DO NOTHING
    RETURNING m.id, m.room_name, m.user_id, m.text, m.created_at, m.seq
    INTO id, room_name, user_id, text, created_at, seq;
    IF FOUND THEN
        outcome := 'posted';
    ELSE
        SELECT * INTO outcome, id, room_name, user_id, text, created_at, seq
        FROM live_chat_stored(p_id, p_room, p_user, p_text);
    END IF;
END
$$;

CALL live_revoke_from_api_roles(ARRAY[
    'live_chat_stored(UUID, TEXT, UUID, TEXT)',
    'live_chat_say(TEXT, UUID, TEXT, TEXT, FLOAT8, BIGINT, UUID)'
]::REGPROCEDURE[]);
GRANT EXECUTE ON FUNCTION
    live_chat_stored(UUID, TEXT, UUID, TEXT),
    live_chat_say(TEXT, UUID, TEXT, TEXT, FLOAT8, BIGINT, UUID)
TO live_api;
