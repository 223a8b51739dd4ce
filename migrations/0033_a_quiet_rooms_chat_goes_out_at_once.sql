-- A quiet room's chat goes out at once.
--
-- The poster holding a room's batch lease waited a whole batch interval
-- (100 ms) before sending, in every room: a message into a quiet room waited
-- 100 ms for company it never got, and its request held a chat container
-- that long, so the chat function's containers, not its route throttle, set
-- how many rooms could chat at once. The interval is there to keep a busy
-- room to one SendData per 100 ms, which only needs the batches spaced: the
-- room now keeps when its last batch went out, and taking the lease says how
-- long is left of the spacing (0 when the last batch is older than it). A
-- quiet room's post sends at once; in a busy room the holder waits out the
-- rest of the interval, as before.
--
-- live_chat_take_batch_lease(TEXT, INTERVAL) (0031) stays for the functions
-- deployed before this migration; this code calls the one below.

ALTER TABLE live_chat_broadcasts ADD COLUMN last_sent_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity';

CREATE FUNCTION live_chat_take_batch_lease(p_room TEXT, p_hold INTERVAL, p_spacing INTERVAL)
RETURNS TABLE (sent_up_to BIGINT, lease_until TIMESTAMPTZ, send_in DOUBLE PRECISION)
LANGUAGE sql
AS $$
    INSERT INTO live_chat_broadcasts AS b (room_name, lease_until)
    VALUES (p_room, clock_timestamp() + p_hold)
    ON CONFLICT (room_name) DO UPDATE SET lease_until = clock_timestamp() + p_hold
    WHERE b.lease_until < clock_timestamp()
    RETURNING b.sent_up_to, b.lease_until,
        -- Seconds until the room may have its next batch; '-infinity' (never
        -- sent) plus the spacing is long past.
        CASE WHEN b.last_sent_at + p_spacing <= clock_timestamp() THEN 0
             ELSE extract(epoch FROM b.last_sent_at + p_spacing - clock_timestamp())::DOUBLE PRECISION
        END
$$;

-- 0031's live_chat_batch_done, now also noting when a batch went out.
CREATE OR REPLACE FUNCTION live_chat_batch_done(p_room TEXT, p_sent BIGINT, p_lease TIMESTAMPTZ) RETURNS BOOLEAN
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE live_chat_broadcasts b
    SET messages_sent = b.messages_sent + (
            SELECT count(*) FROM live_messages m
            WHERE m.room_name = p_room AND m.seq > b.sent_up_to AND m.seq <= p_sent),
        -- Changed: a batch that sent something spaces the next one from now.
        last_sent_at = CASE WHEN p_sent > b.sent_up_to THEN clock_timestamp() ELSE b.last_sent_at END,
        sent_up_to = greatest(b.sent_up_to, p_sent),
        lease_until = CASE WHEN b.lease_until = p_lease THEN '-infinity' ELSE b.lease_until END
    WHERE b.room_name = p_room;
    RETURN EXISTS (
        SELECT FROM live_messages m, live_chat_broadcasts b
        WHERE m.room_name = p_room AND b.room_name = p_room AND m.seq > b.sent_up_to
    );
END
$$;
-- CREATE OR REPLACE keeps the privileges 0031 set.

CALL live_revoke_from_api_roles(ARRAY[
    'live_chat_take_batch_lease(TEXT, INTERVAL, INTERVAL)'
]::REGPROCEDURE[]);
GRANT EXECUTE ON FUNCTION live_chat_take_batch_lease(TEXT, INTERVAL, INTERVAL) TO live_api;
