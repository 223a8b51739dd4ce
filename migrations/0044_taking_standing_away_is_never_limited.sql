-- Taking standing away could be refused as over the stage limit: a host
-- who had spent it (a busy Q&A of invitations) got 429 taking an abusive
-- guest off the stage, and the guest kept their camera until Retry-After; a
-- guest could be refused leaving the stage, or a viewer declining. Consent
-- withdrawn must always go through. A lower, decline or remove that changes
-- something is now served whatever the limit, and spends none of it: each
-- undoes a raise, an invitation or an accept the limit already counted, so
-- they cannot outnumber them. One that changes nothing (a repeat) still
-- counts and is refused over the limit.
--
-- Whole body of 0036's live_stage_change_within_limit; what changed is
-- marked.

CREATE OR REPLACE FUNCTION live_stage_change_within_limit(
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
        -- Changed: a change that takes standing away is never counted.
        IF outcome = 'ok' AND NOT (coalesce(changed, false) AND p_action IN ('lower', 'decline', 'remove')) THEN
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
-- CREATE OR REPLACE keeps the privileges 0036 set.
