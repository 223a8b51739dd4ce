-- The reconciler's run in a big room, and the end meeting it.
--
-- live_sync_sessions locked every session LiveKit listed and rewrote each
-- one ('reopen' of a session already present still updated it): in a room of
-- 50,000 viewers, one statement locking and writing 50,000 rows every minute,
-- against the functions' 5 s statement_timeout, while every leave in the
-- room waited for its session's lock (lock_timeout 2 s: a 503, and LiveKit's
-- retry). A listed session that is present already, or that a leave event
-- closed (the leave is newer than any listing), needs nothing. The run now
-- locks and changes only what differs: unknown listed sessions (inserted),
-- listed ones a previous run closed (reopened), and present ones it did not
-- list (closed).
--
-- Within one identity it inserts the sessions it does not know before it
-- reopens the ones it closed: a reopen takes the identity's presence row,
-- and then waiting for a join's uncommitted insert of a new session (which
-- waits for that presence row) was a deadlock.
--
-- live_close_counts (an end) locked the room's open sessions in the order it
-- found them and deleted the presence rows likewise, while the reconciler
-- locks sessions by sid and presence rows by identity: the two could wait on
-- each other until the deadlock detector failed one. The end now takes both
-- in those orders too.

-- As 0023's, changing only what differs, new sessions of an identity first.
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
      AND ((sid = ANY (p_sids) AND left_at IS NOT NULL AND closed_by_reconciler)
           OR (joined AND left_at IS NULL AND updated_at < p_listed_at AND NOT (sid = ANY (p_sids))))
    ORDER BY sid
    FOR UPDATE;
    FOR v_session IN
        SELECT sid, identity, counted, 'close' AS change, NULL::text AS name, true AS known
        FROM live_participant_sessions
        WHERE room_name = p_room AND joined AND left_at IS NULL
          AND NOT (sid = ANY (p_sids)) AND updated_at < p_listed_at
        UNION ALL
        SELECT listed.sid, listed.identity, listed.counted, 'reopen', listed.name, s.sid IS NOT NULL
        FROM unnest(p_sids, p_identities, p_counted, p_names) AS listed (sid, identity, counted, name)
        LEFT JOIN live_participant_sessions s ON s.room_name = p_room AND s.sid = listed.sid
        WHERE s.sid IS NULL OR (s.left_at IS NOT NULL AND s.closed_by_reconciler)
        ORDER BY 2, 4 DESC, 6, 1
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

-- As 0023's, the sessions locked by sid and the presence rows by identity.
CREATE OR REPLACE FUNCTION live_close_counts(p_room TEXT) RETURNS VOID
LANGUAGE plpgsql
AS $$
DECLARE
    v_now DOUBLE PRECISION := extract(epoch FROM now());
BEGIN
    PERFORM 1 FROM live_participant_sessions
    WHERE room_name = p_room AND left_at IS NULL
    ORDER BY sid
    FOR UPDATE;
    UPDATE live_participant_sessions SET left_at = now(), updated_at = now()
    WHERE room_name = p_room AND left_at IS NULL;
    PERFORM 1 FROM live_presence WHERE room_name = p_room ORDER BY identity FOR UPDATE;
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
-- CREATE OR REPLACE keeps the privileges 0012 set.
