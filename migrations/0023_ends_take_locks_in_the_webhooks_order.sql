-- Lock order, and a peak the reconciler could make up.
--
-- Every webhook takes its locks in one order: its session, the identity's
-- presence row, the identity's stage row (a last leave clears it), and last
-- one count shard (0009). Ending a stream (live_close_counts, under
-- /live/end, room_finished and the reconciler's grace) took the shards
-- first: all sixteen, then the presence rows, then the sessions. A viewer's
-- leave holding its session and presence row and waiting for its shard, and
-- an end holding that shard and waiting for the presence row, waited on each
-- other until Postgres broke the cycle after deadlock_timeout (1 s) by
-- failing one: in a busy room, an end was all but sure to meet such a leave
-- or join, and the host's retry met the next. The end now takes them in the
-- webhooks' order, the shards last: a webhook waits for the end only at its
-- first lock, holding nothing the end wants, or at its shard, when the end
-- wants nothing more of it.
--
-- The reconciler's run (live_sync_sessions) goes through the identities in
-- order, each one's listed sessions (which it may have to insert) before the
-- sessions it closes: a join inserting an identity's new session while the
-- run closes that identity's old one no longer waits on the run's lock of
-- the presence row while the run waits on the join's insert. And it applies
-- its shards' changes losses first: each gain reads the other shards for the
-- peak, which counted a viewer the run found gone when a gaining shard came
-- first (a peak of 2 when there was never more than 1). It locks the room's
-- shards in order first, as the end does, so the two orders cannot cross.
--
-- What an end cannot see stays as it was: a first join whose presence row
-- commits while the end runs keeps that row and its open session (the
-- stream's counts are closed by then, so neither is counted anywhere).

-- As 0012's, in the webhooks' lock order.
CREATE OR REPLACE FUNCTION live_close_counts(p_room TEXT) RETURNS VOID
LANGUAGE plpgsql
AS $$
DECLARE
    v_now DOUBLE PRECISION := extract(epoch FROM now());
BEGIN
    UPDATE live_participant_sessions SET left_at = now(), updated_at = now()
    WHERE room_name = p_room AND left_at IS NULL;
    DELETE FROM live_presence WHERE room_name = p_room;
    UPDATE live_stage SET hand_raised_at = NULL, invited_at = NULL, on_stage_since = NULL
    WHERE room_name = p_room;
    PERFORM 1 FROM live_viewer_counts WHERE room_name = p_room ORDER BY shard FOR UPDATE;
    PERFORM live_note_peak(p_room, live_viewer_count(p_room));
    INSERT INTO live_viewer_counts AS c (room_name, shard, viewers, closed)
    SELECT p_room, g, 0, true FROM generate_series(0, 15) AS g
    ON CONFLICT (room_name, shard) DO UPDATE
    SET watch_seconds = CASE WHEN c.closed THEN c.watch_seconds
                             ELSE c.watch_seconds + greatest(c.viewers * v_now - c.present_since_sum, 0) END,
        present_since_sum = 0, viewers = 0, closed = true;
    UPDATE live_streams SET viewer_count = 0, viewer_count_written_at = clock_timestamp()
    WHERE id = p_room AND viewer_count <> 0;
END
$$;

-- As 0012's, the listed sessions of each identity first and its shards'
-- losses before its gains.
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
    IF NOT EXISTS (SELECT FROM live_streams WHERE id = p_room AND is_live) THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM live_participant_sessions
    WHERE room_name = p_room
      AND (sid = ANY (p_sids) OR (joined AND left_at IS NULL AND updated_at < p_listed_at))
    ORDER BY sid
    FOR UPDATE;
    FOR v_session IN
        SELECT sid, identity, counted, 'close' AS change, NULL::text AS name FROM live_participant_sessions
        WHERE room_name = p_room AND joined AND left_at IS NULL
          AND NOT (sid = ANY (p_sids)) AND updated_at < p_listed_at
        UNION ALL
        SELECT listed.sid, listed.identity, listed.counted, 'reopen', listed.name
        FROM unnest(p_sids, p_identities, p_counted, p_names) AS listed (sid, identity, counted, name)
        ORDER BY 2, 4 DESC, 1
    LOOP
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
-- CREATE OR REPLACE keeps the privileges 0012 set.
