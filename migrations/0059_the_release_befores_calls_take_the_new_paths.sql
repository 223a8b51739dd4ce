-- The overloads kept for the binaries of the release before, 0022's
-- live_chat_say and 0035's live_token_access, kept whole bodies of their
-- own beside the new ones (0057, 0058), which differ from them by a few
-- lines: two bodies of one rule to keep in step. Each now calls the new one
-- with what its call means: no message id, and no time to return (a stage
-- place is never judged lapsed by the token, as before).

CREATE OR REPLACE FUNCTION live_chat_say(
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
LANGUAGE sql
AS $$
    SELECT * FROM live_chat_say(p_room, p_user, p_text, p_limit_key, p_window_seconds, p_max, NULL::uuid)
$$;

CREATE OR REPLACE PROCEDURE live_token_access(
    p_room TEXT,
    p_user UUID,
    p_limit_key TEXT,
    p_window_seconds FLOAT8,
    p_max BIGINT,
    INOUT retry_after BIGINT DEFAULT NULL,
    INOUT streamer_id UUID DEFAULT NULL,
    INOUT is_live BOOLEAN DEFAULT NULL,
    INOUT banned BOOLEAN DEFAULT NULL,
    INOUT muted BOOLEAN DEFAULT NULL,
    INOUT hand_raised BOOLEAN DEFAULT NULL,
    INOUT invited BOOLEAN DEFAULT NULL,
    INOUT on_stage BOOLEAN DEFAULT NULL
)
LANGUAGE plpgsql
AS $$
BEGIN
    CALL live_token_access(p_room, p_user, p_limit_key, p_window_seconds, p_max, NULL::FLOAT8,
        retry_after, streamer_id, is_live, banned, muted, hand_raised, invited, on_stage);
END
$$;
-- CREATE OR REPLACE keeps both routines' privileges (live_api only).
