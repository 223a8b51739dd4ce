-- live_token_access counts its hit with rate_limit_hit instead of a copy of
-- its statements: 0014 and 0015 inlined the limiter into the procedure, so
-- the GCRA rule lived in two bodies that every change to it had to keep
-- alike. The nested call is one more PL/pgSQL function entry per token:
-- about 4 us on a quiet machine (pgbench p50 177-178 against 173-174 us);
-- six alternating 6 s rounds on a busy one put the two within each other's
-- noise (first hits 192-251 against 176-275 us, known keys 198-236 against
-- 188-294 us). The procedure keeps its CALL form, and rate_limit_hit stays as
-- 0015 left it.

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
    retry_after := rate_limit_hit(p_limit_key, p_window_seconds, p_max);
    IF retry_after IS NOT NULL THEN
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
