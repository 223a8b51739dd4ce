-- A guest whose connection was lost longer than STAGE_RETURN_SECONDS ago
-- keeps their stage row until the reconciler's next run ends the turn (up to
-- a minute later). A token asked for in that gap was minted on stage: camera
-- and microphone, and the on_stage attribute. Their join's webhook then ends
-- the turn (migration 0054) and takes the grant back, but for a moment a
-- viewer who was out too long was on camera. The token now reads the stage
-- as that run will leave it: a hand, an invitation or a turn whose holder has
-- been away longer than p_stage_return (seconds) is over.
--
-- Whole body of 0035's live_token_access, with p_stage_return; what changed
-- is marked. The INOUT parameters have no defaults, so a call of the
-- procedure before (five arguments and eight NULLs) never matches this one;
-- that one stays for the binaries of the release before.

CREATE PROCEDURE live_token_access(
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
    -- Changed: whether the caller has been away past their time to return.
    SELECT s.streamer_id, s.is_live, coalesce(r.banned, false), coalesce(r.muted, false),
           g.hand_raised_at IS NOT NULL, g.invited_at IS NOT NULL, g.on_stage_since IS NOT NULL,
           coalesce(g.away_since < now() - make_interval(secs => p_stage_return), false)
    INTO streamer_id, is_live, banned, muted, hand_raised, invited, on_stage, v_lapsed
    FROM live_streams AS s
    LEFT JOIN live_room_restrictions AS r ON r.room_name = s.id AND r.user_id = p_user
    LEFT JOIN live_stage AS g ON g.room_name = s.id AND g.user_id = p_user
    WHERE s.id = p_room;
    IF v_lapsed THEN
        hand_raised := false;
        invited := false;
        on_stage := false;
    END IF;
    IF FOUND AND is_live AND NOT banned THEN
        retry_after := rate_limit_hit(p_limit_key, p_window_seconds, p_max);
    END IF;
END
$$;

CALL live_revoke_from_api_roles(ARRAY[
    'live_token_access(TEXT, UUID, TEXT, FLOAT8, BIGINT, FLOAT8, BIGINT, UUID, BOOLEAN, BOOLEAN, BOOLEAN, BOOLEAN, BOOLEAN, BOOLEAN)'
]::REGPROCEDURE[]);
GRANT EXECUTE ON PROCEDURE
    live_token_access(TEXT, UUID, TEXT, FLOAT8, BIGINT, FLOAT8, BIGINT, UUID, BOOLEAN, BOOLEAN, BOOLEAN, BOOLEAN, BOOLEAN, BOOLEAN)
TO live_api;
