-- A room's chat batches are at least 100 ms apart (0033), counted from the
-- last batch that sent something. A batch that failed (LiveKit down, or the
-- room gone while the stream is still live) let its lease go without moving
-- that mark, so every post that came next made its own SendData attempt at
-- once: a busy room hammered LiveKit just when it was failing. A failed
-- attempt now spaces the next one as a sent batch does, and lets go only of
-- its own lease (0031).

CREATE FUNCTION live_chat_batch_failed(p_room TEXT, p_lease TIMESTAMPTZ) RETURNS VOID
LANGUAGE sql
AS $$
    UPDATE live_chat_broadcasts
    SET last_sent_at = clock_timestamp(), lease_until = '-infinity'
    WHERE room_name = p_room AND lease_until = p_lease;
$$;

CALL live_revoke_from_api_roles(ARRAY[
    'live_chat_batch_failed(TEXT, TIMESTAMPTZ)'
]::REGPROCEDURE[]);
GRANT EXECUTE ON FUNCTION live_chat_batch_failed(TEXT, TIMESTAMPTZ) TO live_api;
