-- live_sync_sessions compares a room's sessions with LiveKit's listing by
-- `sid = ANY (p_sids)`. PL/pgSQL plans each statement for the values of its
-- first calls on a connection, where Postgres hashes the listed array; from
-- about the sixth call it may switch to a generic plan, where the array is
-- an unknown parameter and each session is compared with every listed sid in
-- turn. A pooled connection gets there within a few reconciler runs, and a
-- room of 50,000 viewers, all listed, then took 18 to 20 s a call from the
-- sixth call on a connection, against 171 to 200 ms for the first five
-- (Postgres 15, one connection, twelve calls): past the 5 s statement timeout, so
-- the biggest rooms were never synced again, lost leaves never closed, and the
-- run held the room's standing lock for seconds. Those two statements now run
-- through EXECUTE … USING, planned each call with the listing's values; the
-- statements of the loop (one per session that changes, tens of thousands
-- in a repair) keep their cached plans. Whole body of 0054's eight-argument
-- live_sync_sessions; what changed is marked. The six-argument overload only
-- calls it. CREATE OR REPLACE keeps its privileges.

CREATE OR REPLACE FUNCTION live_sync_sessions(
    p_room TEXT,
    p_listed_at TIMESTAMPTZ,
    p_sids TEXT[],
    p_identities TEXT[],
    p_counted BOOLEAN[],
    p_names TEXT[],
    p_joined_at TIMESTAMPTZ[],
    p_stage_return DOUBLE PRECISION
) RETURNS INTEGER
LANGUAGE plpgsql
AS $$
DECLARE
    v_changed INTEGER := 0;
    v_deltas INTEGER[] := array_fill(0, ARRAY[16]);
    v_unique INTEGER[] := array_fill(0, ARRAY[16]);
    v_arrivals DOUBLE PRECISION[] := array_fill(0::float8, ARRAY[16]);
    v_watched DOUBLE PRECISION[] := array_fill(0::float8, ARRAY[16]);
    v RECORD;
    v_session RECORD;
    v_shard INTEGER;
BEGIN
    -- One sync of a room at a time, then the standing lock (0053).
    IF NOT pg_try_advisory_xact_lock(hashtext('live_sync_sessions'), hashtext(p_room)) THEN
        RETURN 0;
    END IF;
    PERFORM live_room_standing_lock(p_room, false);
    IF NOT EXISTS (SELECT FROM live_streams WHERE id = p_room AND is_live) THEN
        RETURN 0;
    END IF;
    -- Changed: the two statements that compare the room's sessions with the
    -- listing are planned with it, every call (EXECUTE … USING).
    EXECUTE
        'SELECT 1 FROM live_participant_sessions
         WHERE room_name = $1
           AND ((sid = ANY ($2) AND left_at IS NOT NULL AND closed_by_reconciler)
                OR (joined AND left_at IS NULL AND updated_at < $3 AND NOT (sid = ANY ($2))))
         ORDER BY sid
         FOR UPDATE'
    USING p_room, p_sids, p_listed_at;
    FOR v_session IN EXECUTE
        'SELECT sid, identity, counted, ''close'' AS change, NULL::text AS name, true AS known,
                NULL::timestamptz AS joined_at
         FROM live_participant_sessions
         WHERE room_name = $1 AND joined AND left_at IS NULL
           AND NOT (sid = ANY ($2)) AND updated_at < $3
         UNION ALL
         SELECT listed.sid, listed.identity, listed.counted, ''reopen'', listed.name, s.sid IS NOT NULL,
                listed.joined_at
         FROM unnest($2, $4, $5, $6, $7) AS listed (sid, identity, counted, name, joined_at)
         LEFT JOIN live_participant_sessions s ON s.room_name = $1 AND s.sid = listed.sid
         WHERE s.sid IS NULL OR (s.left_at IS NOT NULL AND s.closed_by_reconciler)
         ORDER BY 2, 4 DESC, 6, 1'
    USING p_room, p_sids, p_listed_at, p_identities, p_counted, p_names, p_joined_at
    LOOP
        -- A listed session no webhook told of is a join as of when LiveKit
        -- says it joined (0054); others set no limit.
        PERFORM set_config(
            'live.stage_return_cutoff',
            CASE WHEN v_session.change = 'reopen' AND NOT v_session.known AND p_stage_return IS NOT NULL THEN
                -- now(): after the room's listing; LiveKit's clock may be ahead.
                extract(epoch FROM least(now(), coalesce(v_session.joined_at, now()))
                                   - make_interval(secs => p_stage_return))::text
                 ELSE '' END,
            true);
        SELECT * INTO v FROM live_presence_change(
            p_room, v_session.sid, v_session.identity, v_session.counted, v_session.change, v_session.name);
        IF v.delta <> 0 THEN
            v_shard := (hashtext(v_session.identity) & 15) + 1;
            v_deltas[v_shard] := v_deltas[v_shard] + v.delta;
            v_unique[v_shard] := v_unique[v_shard] + v.first_time::int;
            v_arrivals[v_shard] := v_arrivals[v_shard] + v.delta * v.arrived;
            v_watched[v_shard] := v_watched[v_shard] + v.watched;
            v_changed := v_changed + 1;
        END IF;
    END LOOP;
    PERFORM 1 FROM live_viewer_counts WHERE room_name = p_room ORDER BY shard FOR UPDATE;
    FOR v_shard IN 1 .. 16 LOOP
        IF v_deltas[v_shard] < 0 OR (v_deltas[v_shard] = 0 AND (v_unique[v_shard] <> 0 OR v_watched[v_shard] <> 0)) THEN
            PERFORM live_count_add(p_room, v_shard - 1, v_deltas[v_shard], v_unique[v_shard],
                                   v_arrivals[v_shard], v_watched[v_shard]);
        END IF;
    END LOOP;
    FOR v_shard IN 1 .. 16 LOOP
        IF v_deltas[v_shard] > 0 THEN
            PERFORM live_count_add(p_room, v_shard - 1, v_deltas[v_shard], v_unique[v_shard],
                                   v_arrivals[v_shard], v_watched[v_shard]);
        END IF;
    END LOOP;
    PERFORM live_write_viewer_count(p_room);
    RETURN v_changed;
END
$$;
