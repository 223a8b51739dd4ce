-- Rate limits as GCRA (the generic cell rate algorithm) on one timestamp per
-- key, in an UNLOGGED table.
--
-- The sliding window of 0004/0005 kept every hit's time in an array, so a hit
-- cost grew with the limit (a limit of 100,000 rewrote a 100,000-element
-- array). GCRA keeps one "theoretical arrival time" per key: a hit is one
-- comparison and one timestamp, whatever the limit. At most `max` hits pass
-- in any `window`, spread out at most `window / max` apart once the burst is
-- used up.
--
-- UNLOGGED: limiter state may be lost in a crash without harm (a limit starts
-- afresh), so its writes skip the WAL, and a request that only writes here
-- (every /live/token) does not wait for a durable commit.

CREATE UNLOGGED TABLE rate_limits (
    key TEXT PRIMARY KEY,
    -- When the key's next hit would be admitted with no burst left; a key is
    -- fully rested once this is in the past.
    tat TIMESTAMPTZ NOT NULL
);

CREATE INDEX rate_limits_tat_idx ON rate_limits (tat);

ALTER TABLE rate_limits ENABLE ROW LEVEL SECURITY;
CREATE POLICY live_api_all_rows ON rate_limits TO live_api USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE rate_limits TO live_api;

-- Records a hit for p_key if it fits p_max per p_window_seconds. Returns NULL
-- when admitted; otherwise the whole seconds (at least 1) until it would be.
-- The upsert locks the key's row, so concurrent hits for one key are counted
-- one after another.
CREATE OR REPLACE FUNCTION rate_limit_hit(p_key TEXT, p_window_seconds FLOAT8, p_max BIGINT)
RETURNS BIGINT
LANGUAGE plpgsql
AS $$
DECLARE
    v_interval INTERVAL := make_interval(secs => p_window_seconds / greatest(p_max, 1));
    v_tolerance INTERVAL := make_interval(secs => p_window_seconds) - make_interval(secs => p_window_seconds / greatest(p_max, 1));
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

DROP TABLE rate_limit_windows;

DO $$
DECLARE
    grantee TEXT;
BEGIN
    FOREACH grantee IN ARRAY ARRAY['PUBLIC', 'anon', 'authenticated'] LOOP
        IF grantee = 'PUBLIC' OR EXISTS (SELECT FROM pg_roles WHERE rolname = grantee) THEN
            EXECUTE format('REVOKE ALL ON TABLE rate_limits FROM %s', grantee);
            EXECUTE format('REVOKE ALL ON FUNCTION rate_limit_hit(TEXT, FLOAT8, BIGINT) FROM %s', grantee);
        END IF;
    END LOOP;
END
$$;
GRANT EXECUTE ON FUNCTION rate_limit_hit(TEXT, FLOAT8, BIGINT) TO live_api;
