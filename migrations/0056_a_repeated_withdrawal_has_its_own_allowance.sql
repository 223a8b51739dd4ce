-- A repeated withdrawal (a lower, decline or remove that changes nothing)
-- counted against the actor's stage limit. It is how the app retries a
-- withdrawal that answered roomUpdated:false (LiveKit missed it): a host who
-- had spent the limit on invitations took an abusive guest off the stage,
-- LiveKit timed out, and the retry was refused 429 while the guest kept their
-- camera until Retry-After or the reconciler's next run. A repeat now counts
-- against an allowance of its own (key '<limit key>:repeat', the same size
-- and window): spending one never blocks the other, and repeats, each of
-- which costs an UpdateParticipant, stay bounded.
--
-- Whole body of 0044's live_stage_change_within_limit; what changed is
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
        IF outcome = 'ok' AND NOT (coalesce(changed, false) AND p_action IN ('lower', 'decline', 'remove')) THEN
            -- Changed: a repeated withdrawal counts against an allowance of
            -- its own, the same size.
            retry_after := rate_limit_hit(
                CASE WHEN p_action IN ('lower', 'decline', 'remove') THEN p_limit_key || ':repeat'
                     ELSE p_limit_key END,
                p_window_seconds, p_max);
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
