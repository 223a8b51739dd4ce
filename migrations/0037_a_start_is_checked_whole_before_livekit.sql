-- /live/start's first statement checked the name and the caller's live
-- streams but not their profile, and its rate-limit hit was a statement of
-- its own before it:
-- - on a database with public.profiles (Supabase), a user without a profile
--   got their room made by LiveKit (CreateRoom) and deleted again (the
--   foreign key refused only the final insert): two LiveKit calls and a
--   room_started/room_finished pair of webhooks for every refused start;
-- - a refused start (room_taken, already_live, profile_required) spent the
--   caller's start limit, and past it answered 429 instead of its refusal.
--
-- Now the check is one statement, live_start_check: the profile (where the
-- foreign key of 0002 exists), then live_start_stream's check, then the hit,
-- only for a start that goes on to LiveKit (a new room, or a retried start of
-- the caller's live stream). A start over the limit is undone (the block's
-- subtransaction drops the claim 0027 took) and answers 'rate_limited'.

-- Whether the streamer may own a stream as far as the profile key goes. The
-- functions' role reads nothing of the app's own tables, so this runs as its
-- owner (the migrating role), and reads only whether one row exists.
CREATE FUNCTION live_streamer_has_profile(p_streamer UUID) RETURNS BOOLEAN
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_profiles REGCLASS;
    v_found BOOLEAN;
BEGIN
    SELECT c.confrelid::regclass INTO v_profiles
    FROM pg_constraint AS c
    WHERE c.conname = 'live_streams_streamer_id_fkey' AND c.conrelid = 'public.live_streams'::regclass;
    IF v_profiles IS NULL THEN
        RETURN true;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT FROM %s WHERE id = $1)', v_profiles) INTO v_found USING p_streamer;
    RETURN v_found;
END
$$;

CREATE FUNCTION live_start_check(
    p_room TEXT,
    p_streamer UUID,
    p_title TEXT,
    p_max_live INTEGER,
    p_limit_key TEXT,
    p_window_seconds FLOAT8,
    p_max BIGINT,
    OUT outcome TEXT,
    OUT retry_after BIGINT,
    OUT live_room TEXT,
    OUT id TEXT,
    OUT title TEXT,
    OUT streamer_id UUID,
    OUT is_live BOOLEAN,
    OUT viewer_count INTEGER,
    OUT created_at TIMESTAMPTZ,
    OUT ended_at TIMESTAMPTZ
)
LANGUAGE plpgsql
AS $$
BEGIN
    IF NOT live_streamer_has_profile(p_streamer) THEN
        outcome := 'profile_required';
        RETURN;
    END IF;
    BEGIN
        SELECT s.outcome, s.live_room, s.id, s.title, s.streamer_id, s.is_live, s.viewer_count,
               s.created_at, s.ended_at
        INTO outcome, live_room, id, title, streamer_id, is_live, viewer_count, created_at, ended_at
        FROM live_start_stream(p_room, p_streamer, p_title, p_max_live, false, NULL) AS s;
        IF outcome IN ('available', 'already_live') THEN
            retry_after := rate_limit_hit(p_limit_key, p_window_seconds, p_max);
            IF retry_after IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'LV429', MESSAGE = 'over the start limit';
            END IF;
        END IF;
    EXCEPTION WHEN SQLSTATE 'LV429' THEN
        -- Only the database's changes are undone; the variables are cleared
        -- here.
        outcome := 'rate_limited';
        live_room := NULL;
        id := NULL;
        title := NULL;
        streamer_id := NULL;
        is_live := NULL;
        viewer_count := NULL;
        created_at := NULL;
        ended_at := NULL;
    END;
END
$$;

CALL live_revoke_from_api_roles(ARRAY[
    'live_streamer_has_profile(UUID)',
    'live_start_check(TEXT, UUID, TEXT, INTEGER, TEXT, FLOAT8, BIGINT)'
]::REGPROCEDURE[]);
GRANT EXECUTE ON FUNCTION
    live_streamer_has_profile(UUID),
    live_start_check(TEXT, UUID, TEXT, INTEGER, TEXT, FLOAT8, BIGINT)
TO live_api;
