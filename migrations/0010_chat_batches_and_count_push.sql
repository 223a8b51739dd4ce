-- Chat broadcast in batches, and viewer counts pushed into the LiveKit room.
--
-- Chat: in a busy room every message used to be one SendData call. Now each
-- message has a place in its room's order (seq), and one poster at a time per
-- room holds a short lease: it waits out the interval, then sends every
-- message since the room's last batch in one packet, in order. The others
-- store their message and return; a message stored while a batch was on its
-- way is sent by the next one, which the holder starts itself before it lets
-- go when any is left. LiveKit sees about one call per room per interval.

CREATE SEQUENCE live_messages_seq;
ALTER TABLE live_messages ADD COLUMN seq BIGINT NOT NULL DEFAULT nextval('live_messages_seq');
ALTER SEQUENCE live_messages_seq OWNED BY live_messages.seq;
CREATE INDEX live_messages_room_seq_idx ON live_messages (room_name, seq);

CREATE TABLE live_chat_broadcasts (
    room_name   TEXT PRIMARY KEY REFERENCES live_streams (id) ON DELETE CASCADE,
    -- Every message of the room up to this seq has been sent.
    sent_up_to  BIGINT NOT NULL DEFAULT 0,
    -- While in the future, a poster is collecting and sending a batch.
    lease_until TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);

-- Messages from before batching were sent one by one already.
INSERT INTO live_chat_broadcasts (room_name, sent_up_to)
SELECT room_name, max(seq) FROM live_messages GROUP BY room_name;

ALTER TABLE live_chat_broadcasts ENABLE ROW LEVEL SECURITY;
CREATE POLICY live_api_all_rows ON live_chat_broadcasts TO live_api USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE ON TABLE live_chat_broadcasts TO live_api;
GRANT USAGE ON SEQUENCE live_messages_seq TO live_api;

-- Takes the room's batch lease for p_hold if nobody holds it. Returns the
-- room's sent_up_to when taken, NULL when someone else is sending.
CREATE FUNCTION live_chat_take_lease(p_room TEXT, p_hold INTERVAL) RETURNS BIGINT
LANGUAGE plpgsql
AS $$
DECLARE
    v_sent BIGINT;
BEGIN
    INSERT INTO live_chat_broadcasts AS b (room_name, lease_until)
    VALUES (p_room, clock_timestamp() + p_hold)
    ON CONFLICT (room_name) DO UPDATE SET lease_until = clock_timestamp() + p_hold
    WHERE b.lease_until < clock_timestamp()
    RETURNING sent_up_to INTO v_sent;
    RETURN v_sent;
END
$$;

-- Records a sent batch (up to p_sent) and lets the lease go; returns whether
-- messages are waiting after it (the holder then takes the lease again).
CREATE FUNCTION live_chat_batch_sent(p_room TEXT, p_sent BIGINT) RETURNS BOOLEAN
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE live_chat_broadcasts
    SET sent_up_to = greatest(sent_up_to, p_sent), lease_until = '-infinity'
    WHERE room_name = p_room;
    RETURN EXISTS (
        SELECT FROM live_messages m, live_chat_broadcasts b
        WHERE m.room_name = p_room AND b.room_name = p_room AND m.seq > b.sent_up_to
    );
END
$$;

-- Viewer counts: the flusher now also says which rooms it wrote, and with
-- which count, so the count can be pushed into each room (one lossy packet a
-- second, which every viewer receives anyway): a viral room's viewers need no
-- Realtime subscription to its row.
DROP FUNCTION live_flush_viewer_counts();
CREATE FUNCTION live_flush_viewer_counts() RETURNS TABLE (room_name TEXT, viewer_count INTEGER)
LANGUAGE sql
AS $$
    UPDATE live_streams s
    SET viewer_count = c.n, viewer_count_written_at = clock_timestamp()
    FROM (SELECT v.room_name, sum(v.viewers)::int AS n FROM live_viewer_counts v GROUP BY v.room_name) c
    WHERE s.id = c.room_name AND s.is_live AND s.viewer_count <> c.n
      AND s.viewer_count_written_at <= clock_timestamp() - interval '1 second'
    RETURNING s.id, s.viewer_count
$$;

-- The event that writes the copy says so, with the count it wrote: it pushes
-- that count into the room too.
DROP FUNCTION live_write_viewer_count(TEXT);
CREATE FUNCTION live_write_viewer_count(p_room TEXT) RETURNS INTEGER
LANGUAGE plpgsql
AS $$
DECLARE
    v_written INTEGER;
BEGIN
    UPDATE live_streams s
    SET viewer_count = live_viewer_count(p_room), viewer_count_written_at = clock_timestamp()
    WHERE s.id = (
        SELECT d.id FROM live_streams d
        WHERE d.id = p_room AND d.is_live
          AND d.viewer_count_written_at <= clock_timestamp() - interval '1 second'
        FOR NO KEY UPDATE SKIP LOCKED
    )
      AND s.viewer_count <> live_viewer_count(p_room)
    RETURNING s.viewer_count INTO v_written;
    RETURN v_written;
END
$$;

DROP FUNCTION live_participant_event(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, UUID, BOOLEAN);
CREATE FUNCTION live_participant_event(
    p_event_id TEXT,
    p_room TEXT,
    p_room_sid TEXT,
    p_change TEXT,
    p_sid TEXT,
    p_identity TEXT,
    p_user UUID,
    p_hidden BOOLEAN,
    OUT outcome TEXT,
    OUT streamer_id UUID,
    OUT is_live BOOLEAN,
    OUT banned BOOLEAN,
    OUT muted BOOLEAN,
    OUT count_written INTEGER
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_room_sid TEXT;
BEGIN
    IF p_event_id <> '' THEN
        INSERT INTO live_webhook_events (id) VALUES (p_event_id) ON CONFLICT (id) DO NOTHING;
        IF NOT FOUND THEN
            outcome := 'duplicate';
            RETURN;
        END IF;
    END IF;
    SELECT s.streamer_id, s.is_live, s.room_sid INTO streamer_id, is_live, v_room_sid
    FROM live_streams s WHERE s.id = p_room;
    IF NOT FOUND OR (p_room_sid <> '' AND v_room_sid IS NOT NULL AND v_room_sid <> p_room_sid) THEN
        outcome := 'ignored';
        streamer_id := NULL;
        RETURN;
    END IF;
    -- p_user: the identity as a user id, when it is one.
    IF p_user IS NOT NULL THEN
        SELECT r.banned, r.muted INTO banned, muted
        FROM live_room_restrictions r WHERE r.room_name = p_room AND r.user_id = p_user;
    END IF;
    banned := coalesce(banned, false);
    muted := coalesce(muted, false);
    IF NOT is_live THEN
        outcome := 'ignored';
        RETURN;
    END IF;
    PERFORM live_session_change(
        p_room, p_sid, p_identity, NOT p_hidden AND p_identity <> streamer_id::text, p_change);
    count_written := live_write_viewer_count(p_room);
    outcome := 'applied';
END
$$;

DO $$
DECLARE
    grantee TEXT;
    object TEXT;
BEGIN
    FOREACH grantee IN ARRAY ARRAY['PUBLIC', 'anon', 'authenticated'] LOOP
        IF grantee = 'PUBLIC' OR EXISTS (SELECT FROM pg_roles WHERE rolname = grantee) THEN
            EXECUTE format('REVOKE ALL ON TABLE live_chat_broadcasts FROM %s', grantee);
            EXECUTE format('REVOKE ALL ON SEQUENCE live_messages_seq FROM %s', grantee);
            FOREACH object IN ARRAY ARRAY[
                'live_chat_take_lease(TEXT, INTERVAL)',
                'live_chat_batch_sent(TEXT, BIGINT)',
                'live_flush_viewer_counts()',
                'live_write_viewer_count(TEXT)',
                'live_participant_event(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, UUID, BOOLEAN)'
            ] LOOP
                EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %s', object, grantee);
            END LOOP;
        END IF;
    END LOOP;
END
$$;
GRANT EXECUTE ON FUNCTION
    live_chat_take_lease(TEXT, INTERVAL),
    live_chat_batch_sent(TEXT, BIGINT),
    live_flush_viewer_counts(),
    live_write_viewer_count(TEXT),
    live_participant_event(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, UUID, BOOLEAN)
TO live_api;
