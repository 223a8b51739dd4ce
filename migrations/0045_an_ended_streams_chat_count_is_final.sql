-- A stream's chat count (its stats' chatMessages) is what its chat batches
-- counted as they sent, plus the messages no batch has sent yet, counted at
-- read time. A stream that ended with messages unsent (LiveKit down during
-- its last seconds) kept those forever: nothing sends the chat of an ended
-- stream, so every read of its final stats counted them again.
--
-- The end now settles them: when a stream stops being live (its end, its
-- room's room_finished, the reconciler's finish), a trigger adds the unsent
-- messages to the count and marks them settled, in the ending statement.
-- First it waits for the posts in flight, as a batch does: the room's
-- standing lock (every post holds it shared from its start to its commit,
-- 0022) and the chat-order lock (0017's posts hold only that one). Without
-- them a post that had taken its seq but not committed would be passed over
-- (the end's own standing trigger, 0022, fires after this one: triggers run
-- in name order) and, committed after it, counted nowhere. The locks are
-- taken in the posts' order, so no deadlock. No message is posted after
-- that (posts that start later are refused by the end), and a batch still in
-- flight counts only what lies past the settled mark (live_chat_batch_done,
-- 0033), so nothing is counted twice.

-- One room's settling, for the trigger and for the streams that ended
-- before this migration.
CREATE FUNCTION live_settle_chat(p_room TEXT) RETURNS VOID
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM live_room_standing_lock(p_room, true);
    PERFORM pg_advisory_xact_lock(1818782568, hashtext(p_room));
    INSERT INTO live_chat_broadcasts AS b (room_name, sent_up_to, messages_sent)
    SELECT p_room, max(m.seq), count(*)
    FROM live_messages m
    WHERE m.room_name = p_room
    HAVING count(*) > 0
    ON CONFLICT (room_name) DO UPDATE
    SET messages_sent = b.messages_sent + (
            SELECT count(*) FROM live_messages m
            WHERE m.room_name = b.room_name AND m.seq > b.sent_up_to),
        sent_up_to = greatest(b.sent_up_to, EXCLUDED.sent_up_to)
    WHERE EXCLUDED.sent_up_to > b.sent_up_to;
END
$$;

CREATE FUNCTION live_settle_chat_count() RETURNS TRIGGER
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM live_settle_chat(NEW.id);
    RETURN NULL;
END
$$;

CREATE TRIGGER live_settle_chat_count
AFTER UPDATE OF is_live ON live_streams
FOR EACH ROW WHEN (OLD.is_live AND NOT NEW.is_live) EXECUTE FUNCTION live_settle_chat_count();

CALL live_revoke_from_api_roles(ARRAY[
    'live_settle_chat(TEXT)',
    'live_settle_chat_count()'
]::REGPROCEDURE[]);
-- The trigger runs as whoever ends the stream.
GRANT EXECUTE ON FUNCTION live_settle_chat(TEXT) TO live_api;

-- Streams that ended before this migration, with messages past the mark.
SELECT live_settle_chat(s.id)
FROM live_streams s
WHERE NOT s.is_live
  AND EXISTS (
      SELECT FROM live_messages m
      WHERE m.room_name = s.id
        AND m.seq > coalesce((SELECT b.sent_up_to FROM live_chat_broadcasts b WHERE b.room_name = s.id), 0));
