-- live_sync_sessions compares a room's sessions with LiveKit's listing by
-- `sid = ANY (p_sids)`. PL/pgSQL plans each statement for the values of its
-- first calls on a connection, where Postgres hashes the listed array; from
-- about the sixth call it may switch to a generic plan, where the array is
-- an unknown parameter and each session is compared with every listed sid in
-- turn. A pooled connection gets there within a few reconciler runs, and a
-- room of 50,000 viewers then took 20 to 66 s instead of about 0.1 s (10,000:
-- about 3 s instead of 0.05): past the functions' 5 s statement timeout, so
-- the biggest rooms were never synced again, lost leaves never closed, and the
-- run held the room's standing lock for seconds. Every call is now planned
-- for its own listing. The six-argument overload only calls this one.
ALTER FUNCTION live_sync_sessions(TEXT, TIMESTAMPTZ, TEXT[], TEXT[], BOOLEAN[], TEXT[], TIMESTAMPTZ[], DOUBLE PRECISION)
    SET plan_cache_mode = force_custom_plan;
