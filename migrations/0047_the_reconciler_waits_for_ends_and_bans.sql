-- The reconciler and an end of the same room could deadlock. A run goes
-- through the listed identities in order, each as a webhook would: for a
-- returning guest it inserts their presence row, then clears their stage
-- row's away_since; then it goes on to the next identity's presence row. An
-- end (0029's live_close_counts) locks every presence row it can see (not
-- the run's new one), deletes them, then updates every stage row of the
-- room. The run then waited for the end on a presence row, and the end for
-- the run on the guest's stage row: Postgres aborted one of them (the
-- reconciler lost that room's run, or /live/end answered 503). 0023's order
-- (sessions, presence, stage, shards) holds per identity, and a run spans
-- many.
--
-- A run now holds the room's standing lock shared from its start, as posts,
-- taps and stage changes do (0022): an end or a ban, which take it
-- exclusively before any row, waits for the run, or the run for them, and
-- a run that waited for an end finds the stream ended and changes nothing.
-- Bans and ends in a room wait for at most one run's time; the webhooks do
-- not take the lock and never wait for a run.

ALTER FUNCTION live_sync_sessions(TEXT, TIMESTAMPTZ, TEXT[], TEXT[], BOOLEAN[], TEXT[])
    RENAME TO live_sync_sessions_as_listed;

CREATE FUNCTION live_sync_sessions(
    p_room TEXT,
    p_listed_at TIMESTAMPTZ,
    p_sids TEXT[],
    p_identities TEXT[],
    p_counted BOOLEAN[],
    p_names TEXT[]
) RETURNS INTEGER
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM live_room_standing_lock(p_room, false);
    RETURN live_sync_sessions_as_listed(p_room, p_listed_at, p_sids, p_identities, p_counted, p_names);
END
$$;

CALL live_revoke_from_api_roles(ARRAY[
    'live_sync_sessions(TEXT, TIMESTAMPTZ, TEXT[], TEXT[], BOOLEAN[], TEXT[])'
]::REGPROCEDURE[]);
GRANT EXECUTE ON FUNCTION live_sync_sessions(TEXT, TIMESTAMPTZ, TEXT[], TEXT[], BOOLEAN[], TEXT[]) TO live_api;
