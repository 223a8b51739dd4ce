-- Two of the room's packets and an end's cost.
--
-- A reactions packet was marked sent (live_reaction_broadcasts.sent := the
-- totals) when its lease was taken, before it was sent. When the send then
-- failed (LiveKit down, or too slow for the request), nothing sent those
-- totals again unless another tap came: the flusher looks only for rooms
-- whose counts are ahead of what was marked sent. A failed send now gives
-- its mark back, if nothing moved it since, and frees the lease: the next
-- tap or the flusher's next tick sends the totals.
--
-- An end settles the chat no batch sent (0045). It counted every message of
-- the room to build the row it might insert, before finding the row there:
-- a stream with a long chat scanned all of it, under the room's locks, in
-- the ending statement. It now reads only the messages past the sent mark.

CREATE FUNCTION live_reactions_unsent(p_room TEXT, p_totals JSONB, p_counts JSONB) RETURNS VOID
LANGUAGE sql
AS $$
    UPDATE live_reaction_broadcasts b
    SET sent = (SELECT coalesce(jsonb_object_agg(t.key, t.value::bigint - coalesce((p_counts ->> t.key)::bigint, 0)), '{}')
                FROM jsonb_each_text(p_totals) t),
        lease_until = '-infinity'
    WHERE b.room_name = p_room AND b.sent = p_totals;
$$;

CREATE OR REPLACE FUNCTION live_settle_chat(p_room TEXT) RETURNS VOID
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM live_room_standing_lock(p_room, true);
    PERFORM pg_advisory_xact_lock(1818782568, hashtext(p_room));
    -- Changed: the row is made first (a room with chat and no batch yet), so
    -- the count below runs against its mark, as the update's own reading of it.
    IF NOT EXISTS (SELECT FROM live_chat_broadcasts b WHERE b.room_name = p_room) THEN
        IF NOT EXISTS (SELECT FROM live_messages m WHERE m.room_name = p_room) THEN
            RETURN;
        END IF;
        INSERT INTO live_chat_broadcasts (room_name) VALUES (p_room) ON CONFLICT (room_name) DO NOTHING;
    END IF;
    UPDATE live_chat_broadcasts b
    SET messages_sent = b.messages_sent + (
            SELECT count(*) FROM live_messages m
            WHERE m.room_name = b.room_name AND m.seq > b.sent_up_to),
        sent_up_to = greatest(b.sent_up_to, (
            SELECT max(m.seq) FROM live_messages m
            WHERE m.room_name = b.room_name AND m.seq > b.sent_up_to))
    WHERE b.room_name = p_room
      AND EXISTS (SELECT FROM live_messages m WHERE m.room_name = b.room_name AND m.seq > b.sent_up_to);
END
$$;
-- CREATE OR REPLACE keeps live_settle_chat's privileges (0045).

CALL live_revoke_from_api_roles(ARRAY[
    'live_reactions_unsent(TEXT, JSONB, JSONB)'
]::REGPROCEDURE[]);
GRANT EXECUTE ON FUNCTION live_reactions_unsent(TEXT, JSONB, JSONB) TO live_api;
