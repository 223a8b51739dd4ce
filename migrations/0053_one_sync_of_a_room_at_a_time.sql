-- Two reconciler runs syncing one room at once (a run longer than its
-- minute, or a retried invocation) could deadlock each other. A sync locks
-- the sessions it sees to differ from its listing, in sid order, but then
-- inserts the listed sessions it does not know and locks presence rows in
-- identity order, some of them rows the first pass never locked; two runs
-- with different listings took those locks in opposite orders, and
-- Postgres aborted one of them (that room's sync failed for that run).
--
-- A sync now first takes a per-room lock that only syncs take, without
-- waiting: a run that finds another syncing the room leaves it to that one
-- (whose listing is as recent) and changes nothing, not even waiting behind
-- an end queued for the standing lock the first one holds. Then it takes
-- the standing lock shared, so ends and bans order against syncs as before
-- (0047); webhooks take neither and never wait for a sync. The try never
-- waits, so it adds no lock order to deadlock on.

CREATE OR REPLACE FUNCTION live_sync_sessions(
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
    IF NOT pg_try_advisory_xact_lock(hashtext('live_sync_sessions'), hashtext(p_room)) THEN
        RETURN 0;
    END IF;
    PERFORM live_room_standing_lock(p_room, false);
    RETURN live_sync_sessions_as_listed(p_room, p_listed_at, p_sids, p_identities, p_counted, p_names);
END
$$;
-- CREATE OR REPLACE keeps the privileges 0047 set.
