-- A refused stage change used up the caller's stage limit: /live/stage/*
-- counted its hit in a statement of its own before the change, so a change
-- refused as not the streamer's, not watching, not invited, stage full,
-- banned or ended spent the budget the next allowed change needed, and past
-- the limit answered 429 instead of its refusal. 0035 made tokens and taps
-- count only what is served; the stage now does too.
--
-- The change comes first and the hit only for a change that stands ('ok',
-- a repeat included: it tells the room again). A change over the limit is
-- undone: the block's subtransaction rolls back what live_stage_change
-- wrote, and the answer is 'rate_limited' with retry_after. One round trip
-- instead of two. The hit's row lock (the caller's own key) is taken after
-- the room's locks, and nothing takes them in the other order.
--
-- live_stage_change stays as it is, for the functions deployed before this
-- migration.

CREATE FUNCTION live_stage_change_within_limit(
    p_room TEXT,
    p_actor UUID,
    p_user UUID,
    p_action TEXT,
    p_max_guests INTEGER,
    p_limit_key TEXT,
    p_window_seconds FLOAT8,
    p_max BIGINT,
    OUT outcome TEXT,
    OUT retry_after BIGINT,
    OUT changed BOOLEAN,
    OUT hand_raised_at TIMESTAMPTZ,
    OUT invited_at TIMESTAMPTZ,
    OUT on_stage_since TIMESTAMPTZ,
    OUT muted BOOLEAN
)
LANGUAGE plpgsql
AS $$
BEGIN
    BEGIN
        SELECT * INTO outcome, changed, hand_raised_at, invited_at, on_stage_since, muted
        FROM live_stage_change(p_room, p_actor, p_user, p_action, p_max_guests);
        IF outcome = 'ok' THEN
            retry_after := rate_limit_hit(p_limit_key, p_window_seconds, p_max);
            IF retry_after IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'LV429', MESSAGE = 'over the stage limit';
            END IF;
        END IF;
    EXCEPTION WHEN SQLSTATE 'LV429' THEN
        -- Only the database's changes are undone; the variables keep what
        -- the refused change would have been, so they are cleared.
        outcome := 'rate_limited';
        changed := false;
        hand_raised_at := NULL;
        invited_at := NULL;
        on_stage_since := NULL;
        muted := NULL;
    END;
END
$$;

CALL live_revoke_from_api_roles(ARRAY[
    'live_stage_change_within_limit(TEXT, UUID, UUID, TEXT, INTEGER, TEXT, FLOAT8, BIGINT)'
]::REGPROCEDURE[]);
GRANT EXECUTE ON FUNCTION
    live_stage_change_within_limit(TEXT, UUID, UUID, TEXT, INTEGER, TEXT, FLOAT8, BIGINT)
TO live_api;
