-- A chat batch lets go only of its own lease.
--
-- A holder that outlived its lease (LiveKit slow on a batch of several
-- packets, each call bounded at 6 s, against an 8 s lease) went on to record
-- its batch with live_chat_batch_sent, which also cleared the lease of the
-- poster that had taken over meanwhile: a third poster could then take the
-- lease and send the same messages beside the second. Clients key the chat
-- by id, so it cost duplicate packets, not messages, but every overrun let
-- one more sender in. A lease is now named by the moment it lapses, which
-- taking it returns and recording a batch compares: a batch still records
-- what it sent (sent_up_to only grows), and lets the lease go only if it is
-- still the one it took.
--
-- live_chat_take_lease and live_chat_batch_sent (0010, 0012) stay for the
-- functions deployed before this migration; this code calls the two below.

CREATE FUNCTION live_chat_take_batch_lease(p_room TEXT, p_hold INTERVAL)
RETURNS TABLE (sent_up_to BIGINT, lease_until TIMESTAMPTZ)
LANGUAGE sql
AS $$
    INSERT INTO live_chat_broadcasts AS b (room_name, lease_until)
    VALUES (p_room, clock_timestamp() + p_hold)
    ON CONFLICT (room_name) DO UPDATE SET lease_until = clock_timestamp() + p_hold
    WHERE b.lease_until < clock_timestamp()
    RETURNING b.sent_up_to, b.lease_until
$$;

-- 0012's live_chat_batch_sent, with the lease compared before it is cleared.
CREATE FUNCTION live_chat_batch_done(p_room TEXT, p_sent BIGINT, p_lease TIMESTAMPTZ) RETURNS BOOLEAN
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE live_chat_broadcasts b
    SET messages_sent = b.messages_sent + (
            SELECT count(*) FROM live_messages m
            WHERE m.room_name = p_room AND m.seq > b.sent_up_to AND m.seq <= p_sent),
        sent_up_to = greatest(b.sent_up_to, p_sent),
        lease_until = CASE WHEN b.lease_until = p_lease THEN '-infinity' ELSE b.lease_until END
    WHERE b.room_name = p_room;
    RETURN EXISTS (
        SELECT FROM live_messages m, live_chat_broadcasts b
        WHERE m.room_name = p_room AND b.room_name = p_room AND m.seq > b.sent_up_to
    );
END
$$;

CALL live_revoke_from_api_roles(ARRAY[
    'live_chat_take_batch_lease(TEXT, INTERVAL)',
    'live_chat_batch_done(TEXT, BIGINT, TIMESTAMPTZ)'
]::REGPROCEDURE[]);
GRANT EXECUTE ON FUNCTION
    live_chat_take_batch_lease(TEXT, INTERVAL),
    live_chat_batch_done(TEXT, BIGINT, TIMESTAMPTZ)
TO live_api;
