-- Rate-limit hits go straight to the upsert again (as 0008), in
-- rate_limit_hit and in the procedure live_token_access of 0014, which keeps
-- its CALL form and everything else.
--
-- 0014 tried an UPDATE first, falling back to the upsert when no row
-- matched, to spare a known key the upsert's speculative insertion. Measured
-- with pgbench on durable Postgres (-M extended, one client, four
-- alternating 6 s rounds of CALL live_token_access, p50):
--   a key's first hit (new keys):    UPDATE first 178-191 us, upsert 169-186 us
--   a known key (2,000 users):       UPDATE first 172-182 us, upsert 175-183 us
-- The saving on a known key is within the noise, and a first hit pays for
-- the UPDATE that finds nothing. First hits are the common case of
-- /live/token: a viewer asks for a token when joining (LiveKit refreshes it
-- while connected), and the reconciler prunes keys rested for an hour, so a
-- join rush is almost all first hits.

CREATE OR REPLACE FUNCTION rate_limit_hit(p_key TEXT, p_window_seconds FLOAT8, p_max BIGINT)
RETURNS BIGINT
LANGUAGE plpgsql
AS $$
DECLARE
    v_interval INTERVAL := make_interval(secs => p_window_seconds / greatest(p_max, 1));
    v_tolerance INTERVAL := make_interval(secs => p_window_seconds) - v_interval;
    v_tat TIMESTAMPTZ;
BEGIN
    INSERT INTO rate_limits AS r (key, tat) VALUES (p_key, now() + v_interval)
    ON CONFLICT (key) DO UPDATE
    SET tat = greatest(r.tat, now()) + v_interval
    WHERE greatest(r.tat, now()) - now() <= v_tolerance;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    SELECT r.tat INTO v_tat FROM rate_limits AS r WHERE r.key = p_key;
    RETURN greatest(ceil(extract(epoch FROM v_tat - now() - v_tolerance))::BIGINT, 1);
END
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
DECLARE
    v_interval INTERVAL := make_interval(secs => p_window_seconds / greatest(p_max, 1));
    v_tolerance INTERVAL := make_interval(secs => p_window_seconds) - v_interval;
    v_tat TIMESTAMPTZ;
BEGIN
    INSERT INTO rate_limits AS r (key, tat) VALUES (p_limit_key, now() + v_interval)
    ON CONFLICT (key) DO UPDATE
    SET tat = greatest(r.tat, now()) + v_interval
    WHERE greatest(r.tat, now()) - now() <= v_tolerance;
    IF NOT FOUND THEN
        SELECT r.tat INTO v_tat FROM rate_limits AS r WHERE r.key = p_limit_key;
        retry_after := greatest(ceil(extract(epoch FROM v_tat - now() - v_tolerance))::BIGINT, 1);
        RETURN;
    END IF;
    SELECT s.streamer_id, s.is_live, coalesce(r.banned, false), coalesce(r.muted, false),
           g.hand_raised_at IS NOT NULL, g.invited_at IS NOT NULL, g.on_stage_since IS NOT NULL
    INTO streamer_id, is_live, banned, muted, hand_raised, invited, on_stage
    FROM live_streams AS s
    LEFT JOIN live_room_restrictions AS r ON r.room_name = s.id AND r.user_id = p_user
    LEFT JOIN live_stage AS g ON g.room_name = s.id AND g.user_id = p_user
    WHERE s.id = p_room;
END
$$;
-- CREATE OR REPLACE keeps the privileges 0014 set (live_api only).
