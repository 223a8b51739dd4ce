-- A refused token request or tap used up the caller's rate limit: both
-- counted their hit before reading the stream, so a banned user, or anyone
-- asking for an unknown or ended room, got 403, 404 or 409 until the limit
-- and then 429 with a Retry-After (the README promises the refusal), and
-- spent the budget their next allowed request needed. The stream and the
-- standing are now read first, and only a request that would be served
-- counts, as a chat post already does. A refusal costs the same statement
-- either way, so the limit lost nothing as a guard.
--
-- Whole bodies of 0016's live_token_access and 0012's live_react (renamed
-- live_react_under_standing by 0022); what changed is marked.

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
    SELECT s.streamer_id, s.is_live, coalesce(r.banned, false), coalesce(r.muted, false),
           g.hand_raised_at IS NOT NULL, g.invited_at IS NOT NULL, g.on_stage_since IS NOT NULL
    INTO streamer_id, is_live, banned, muted, hand_raised, invited, on_stage
    FROM live_streams AS s
    LEFT JOIN live_room_restrictions AS r ON r.room_name = s.id AND r.user_id = p_user
    LEFT JOIN live_stage AS g ON g.room_name = s.id AND g.user_id = p_user
    WHERE s.id = p_room;
    -- Changed: only a request that gets a token counts.
    IF FOUND AND is_live AND NOT banned THEN
        retry_after := rate_limit_hit(p_limit_key, p_window_seconds, p_max);
    END IF;
END
$$;
-- CREATE OR REPLACE keeps the privileges 0014 set (live_api only).

CREATE OR REPLACE FUNCTION live_react_under_standing(
    p_room TEXT,
    p_user UUID,
    p_kind TEXT,
    p_limit_key TEXT,
    p_window_seconds FLOAT8,
    p_max BIGINT,
    p_interval INTERVAL,
    OUT retry_after BIGINT,
    OUT streamer_id UUID,
    OUT is_live BOOLEAN,
    OUT banned BOOLEAN,
    OUT counts JSONB,
    OUT totals JSONB
)
LANGUAGE plpgsql
AS $$
BEGIN
    SELECT s.streamer_id, s.is_live, coalesce(r.banned, false)
    INTO streamer_id, is_live, banned
    FROM live_streams AS s
    LEFT JOIN live_room_restrictions AS r ON r.room_name = s.id AND r.user_id = p_user
    WHERE s.id = p_room;
    IF NOT FOUND OR NOT is_live OR banned THEN
        RETURN;
    END IF;
    -- Changed: counted after the checks, not before.
    retry_after := rate_limit_hit(p_limit_key, p_window_seconds, p_max);
    IF retry_after IS NOT NULL THEN
        RETURN;
    END IF;
    INSERT INTO live_reaction_counts AS c (room_name, kind, shard, n)
    VALUES (p_room, p_kind, hashtext(p_user::text) & 15, 1)
    ON CONFLICT (room_name, kind, shard) DO UPDATE SET n = c.n + 1;
    SELECT t.counts, t.totals INTO counts, totals FROM live_reactions_take(p_room, p_interval) t;
END
$$;
-- CREATE OR REPLACE keeps the privileges 0022 set.
