-- A hand raised while its viewer's join was committing can leave a mark of
-- away on someone in the room (0068; the reconciler clears it at its next
-- run, e85cd3f). /live/token read that mark, once older than the time to
-- return, as a lapsed place, and minted a guest's token without camera or
-- the on_stage attribute until the mark was cleared. A viewer present in the
-- room is back, whatever the mark says (a join after the time to return ends
-- the turn itself, 0054): the presence row is read only for a lapsed mark,
-- so a token without one costs nothing more.
--
-- Whole body of 0058's live_token_access; what changed is marked. Same
-- signature: CREATE OR REPLACE keeps its privileges (live_api only).

CREATE OR REPLACE PROCEDURE live_token_access(
    p_room TEXT,
    p_user UUID,
    p_limit_key TEXT,
    p_window_seconds FLOAT8,
    p_max BIGINT,
    p_stage_return FLOAT8,
    INOUT retry_after BIGINT,
    INOUT streamer_id UUID,
    INOUT is_live BOOLEAN,
    INOUT banned BOOLEAN,
    INOUT muted BOOLEAN,
    INOUT hand_raised BOOLEAN,
    INOUT invited BOOLEAN,
    INOUT on_stage BOOLEAN
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_lapsed BOOLEAN;
BEGIN
    SELECT s.streamer_id, s.is_live, coalesce(r.banned, false), coalesce(r.muted, false),
           g.hand_raised_at IS NOT NULL, g.invited_at IS NOT NULL, g.on_stage_since IS NOT NULL,
           coalesce(g.away_since < now() - make_interval(secs => p_stage_return), false)
    INTO streamer_id, is_live, banned, muted, hand_raised, invited, on_stage, v_lapsed
    FROM live_streams AS s
    LEFT JOIN live_room_restrictions AS r ON r.room_name = s.id AND r.user_id = p_user
    LEFT JOIN live_stage AS g ON g.room_name = s.id AND g.user_id = p_user
    WHERE s.id = p_room;
    -- Changed: not while the caller is in the room.
    IF v_lapsed AND NOT EXISTS (
        SELECT FROM live_presence AS p WHERE p.room_name = p_room AND p.identity = p_user::text
    ) THEN
        hand_raised := false;
        invited := false;
        on_stage := false;
    END IF;
    IF FOUND AND is_live AND NOT banned THEN
        retry_after := rate_limit_hit(p_limit_key, p_window_seconds, p_max);
    END IF;
END
$$;
