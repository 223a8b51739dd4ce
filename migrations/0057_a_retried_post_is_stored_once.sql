-- A post whose answer never reached the app (cut off at its deadline after
-- its commit, or lost on a mobile network) was stored again when the app
-- retried it, and the room saw the message twice. A post may now name its
-- message's id: a UUID the app makes once per message and sends on every
-- attempt. A repeat (the same id, user, room and text) finds the message
-- stored and answers it: it spends no rate limit, and nothing that came
-- after it (an end, a ban, a mute) refuses it, since it was stored before.
-- A repeat of the caller's message deleted since is refused as such
-- ('deleted': the app must not post it again under a new id), and an id of
-- any other message is refused ('id_taken'). Attempts naming one id wait
-- for each other (a transaction-scoped advisory lock on the id, taken before
-- anything is read): a retry overlapping its first attempt finds the message
-- once the first commits, instead of being checked and counted beside it.
-- Without an id, a post is as before.
--
-- Whole body of 0022's live_chat_say, with p_id; what changed is marked.
-- The six-argument function stays for the binaries of the release before.

-- What a post naming p_id finds stored: 'repeated' with the message, or
-- 'deleted' or 'id_taken' with nothing, or a NULL outcome when no message
-- has that id.
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
DECLARE
    v_theirs BOOLEAN;
    v_deleted BOOLEAN;
    v_same_text BOOLEAN;
BEGIN
    SELECT m.id, m.room_name, m.user_id, m.text, m.created_at, m.seq,
           m.room_name = p_room AND m.user_id = p_user, m.deleted_at IS NOT NULL, m.text = p_text
    INTO id, room_name, user_id, text, created_at, seq, v_theirs, v_deleted, v_same_text
    FROM live_messages AS m
    WHERE m.id = p_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v_theirs AND NOT v_deleted AND v_same_text THEN
        outcome := 'repeated';
        RETURN;
    END IF;
    -- The text of a deleted message is blanked: the caller's own in this
    -- room is theirs whatever they sent.
    outcome := CASE WHEN v_theirs AND v_deleted THEN 'deleted' ELSE 'id_taken' END;
    id := NULL;
    room_name := NULL;
    user_id := NULL;
    text := NULL;
    created_at := NULL;
    seq := NULL;
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
    -- Changed: a repeat answers what is stored, before any check, once the
    -- attempts of the same id before it are done. The first number keeps
    -- these locks apart from the room's chat-order lock (0017).
    IF p_id IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(1818782569, hashtext(p_id::text));
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
    -- Changed: the app's id when it named one. Attempts of one id wait for
    -- each other above, so a conflict here is an id taken by a post that
    -- named none (a random id alike, never in practice) or by another user.
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
