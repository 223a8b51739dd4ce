-- The rate limit and the /live/token check as PL/pgSQL functions.
--
-- The driver sends unnamed statements only (so Supabase's transaction-mode
-- pooler and PgBouncer work), and Postgres plans an unnamed statement on every
-- call: for the token check, a data-modifying CTE with three joins, planning
-- cost more than executing. PL/pgSQL keeps the plans of a function's statements
-- for the life of the server session, and the statement the driver sends is a
-- bare function call, so the hot path is planned once per connection.

-- Records a hit for p_key if fewer than p_max hits fall in the last
-- p_window_seconds. Returns NULL when admitted; otherwise the whole seconds
-- (at least 1) until the oldest hit leaves the window. The upsert locks the
-- key's row, so concurrent hits for one key are counted one after another.
CREATE FUNCTION rate_limit_hit(p_key TEXT, p_window_seconds FLOAT8, p_max BIGINT)
RETURNS BIGINT
LANGUAGE plpgsql
AS $$
DECLARE
    v_window INTERVAL := make_interval(secs => p_window_seconds);
    v_retry_after BIGINT;
BEGIN
    INSERT INTO rate_limit_windows AS w (key, hits) VALUES (p_key, ARRAY[now()])
    ON CONFLICT (key) DO UPDATE
    SET hits = ARRAY(SELECT h FROM unnest(w.hits) AS h WHERE h > now() - v_window ORDER BY h) || now(),
        updated_at = now()
    WHERE (SELECT count(*) FROM unnest(w.hits) AS h WHERE h > now() - v_window) < p_max;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    SELECT ceil(extract(epoch FROM min(h) + v_window - now()))::BIGINT
    INTO v_retry_after
    FROM rate_limit_windows AS w, unnest(w.hits) AS h
    WHERE w.key = p_key AND h > now() - v_window;
    RETURN greatest(coalesce(v_retry_after, 1), 1);
END
$$;

-- /live/token's one round trip: the caller's token rate limit, then the
-- stream and the caller's restrictions in it. retry_after is set when the
-- limit refused the request (the rest is then NULL); streamer_id is NULL when
-- there is no such stream.
CREATE FUNCTION live_token_access(
    p_room TEXT,
    p_user UUID,
    p_limit_key TEXT,
    p_window_seconds FLOAT8,
    p_max BIGINT,
    OUT retry_after BIGINT,
    OUT streamer_id UUID,
    OUT is_live BOOLEAN,
    OUT banned BOOLEAN,
    OUT muted BOOLEAN
)
LANGUAGE plpgsql
AS $$
BEGIN
    retry_after := rate_limit_hit(p_limit_key, p_window_seconds, p_max);
    IF retry_after IS NOT NULL THEN
        RETURN;
    END IF;
    SELECT s.streamer_id, s.is_live, coalesce(r.banned, false), coalesce(r.muted, false)
    INTO streamer_id, is_live, banned, muted
    FROM live_streams AS s
    LEFT JOIN live_room_restrictions AS r ON r.room_name = s.id AND r.user_id = p_user
    WHERE s.id = p_room;
END
$$;
