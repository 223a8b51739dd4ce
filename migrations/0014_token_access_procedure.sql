-- /live/token's one round trip, cheaper in Postgres: a procedure called with
-- CALL instead of a function read with SELECT ... FROM, the rate limit inlined,
-- and the common hit (a known key within its limit) a plain UPDATE.
--
-- Measured with pgbench (-M extended, unnamed statements as the driver sends
-- them, one client, 2,000 users, production limits, durable Postgres, three
-- alternating 8 s rounds), per call p50 / p99:
--   0012's function, SELECT cols FROM live_token_access(...)   194-195 / 244-258 us
--   a procedure, rate limit inlined as 0008's upsert          176-180 / 234-271 us
--   the same, UPDATE first (this migration)                   174-178 / 231-240 us
--   one statement (the hit as a CTE) inside the procedure     178-179 / 228-237 us
--   one statement sent as is, planned per call                412-415 / 488-564 us
-- A function read in FROM pays for a function scan node and a tuplestore of
-- its result around the call; CALL runs the procedure and sends its INOUT
-- parameters back as the row, which decodes with built-in types (a composite
-- type would make the driver look it up with statements of its own, named,
-- which a transaction-mode pooler cannot keep). The outputs default to NULL
-- for callers by hand (psql); the driver passes the NULLs itself, since
-- filling in defaults means reading their stored expressions on every call
-- (another 3-8 us, five alternating rounds).
--
-- UPDATE first: INSERT ... ON CONFLICT inserts speculatively into the unique
-- index before it finds the conflict, on every hit of a known key. A key is
-- known on all but its first hit in an hour (the reconciler prunes keys
-- rested that long), so the upsert now runs only when the UPDATE matched no
-- row: a new key, or a key over its limit (where the upsert's own condition
-- refuses it again, under the row lock, before the retry is computed). Under
-- READ COMMITTED a concurrent hit on the same row makes the UPDATE wait and
-- re-check its condition on the row the other one wrote, so concurrent hits
-- are still counted one after another; two first hits race into the upsert,
-- which admits one by inserting and counts the other on the row it inserted.
-- rate_limit_hit (chat, reactions, moderation, ...) gets the same order.

CREATE OR REPLACE FUNCTION rate_limit_hit(p_key TEXT, p_window_seconds FLOAT8, p_max BIGINT)
RETURNS BIGINT
LANGUAGE plpgsql
AS $$
DECLARE
    v_interval INTERVAL := make_interval(secs => p_window_seconds / greatest(p_max, 1));
    v_tolerance INTERVAL := make_interval(secs => p_window_seconds) - v_interval;
    v_tat TIMESTAMPTZ;
BEGIN
    UPDATE rate_limits AS r SET tat = greatest(r.tat, now()) + v_interval
    WHERE r.key = p_key AND greatest(r.tat, now()) - now() <= v_tolerance;
    IF FOUND THEN
        RETURN NULL;
    END IF;
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

-- As 0012's function: retry_after is set when the limit refused the request
-- (the rest is then NULL); streamer_id is NULL when there is no such stream.
DROP FUNCTION live_token_access(TEXT, UUID, TEXT, FLOAT8, BIGINT);
CREATE PROCEDURE live_token_access(
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
    UPDATE rate_limits AS r SET tat = greatest(r.tat, now()) + v_interval
    WHERE r.key = p_limit_key AND greatest(r.tat, now()) - now() <= v_tolerance;
    IF NOT FOUND THEN
        INSERT INTO rate_limits AS r (key, tat) VALUES (p_limit_key, now() + v_interval)
        ON CONFLICT (key) DO UPDATE
        SET tat = greatest(r.tat, now()) + v_interval
        WHERE greatest(r.tat, now()) - now() <= v_tolerance;
        IF NOT FOUND THEN
            SELECT r.tat INTO v_tat FROM rate_limits AS r WHERE r.key = p_limit_key;
            retry_after := greatest(ceil(extract(epoch FROM v_tat - now() - v_tolerance))::BIGINT, 1);
            RETURN;
        END IF;
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

-- Supabase's default privileges grant new routines (procedures too) to anon
-- and authenticated, as 0006 found for functions. A procedure's INOUT
-- parameters are inputs too, so they belong to its signature.
DO $$
DECLARE
    grantee TEXT;
BEGIN
    FOREACH grantee IN ARRAY ARRAY['PUBLIC', 'anon', 'authenticated'] LOOP
        IF grantee = 'PUBLIC' OR EXISTS (SELECT FROM pg_roles WHERE rolname = grantee) THEN
            EXECUTE format('REVOKE ALL ON PROCEDURE live_token_access(TEXT, UUID, TEXT, FLOAT8, BIGINT, '
                           'BIGINT, UUID, BOOLEAN, BOOLEAN, BOOLEAN, BOOLEAN, BOOLEAN, BOOLEAN) FROM %s', grantee);
        END IF;
    END LOOP;
END
$$;
GRANT EXECUTE ON PROCEDURE live_token_access(TEXT, UUID, TEXT, FLOAT8, BIGINT,
    BIGINT, UUID, BOOLEAN, BOOLEAN, BOOLEAN, BOOLEAN, BOOLEAN, BOOLEAN) TO live_api;
