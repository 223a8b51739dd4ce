-- live_api could UPDATE every column of live_streams and live_messages
-- (0006), so a bug or an injected statement running as the functions could
-- hand a stream to another streamer (streamer_id: /live/token's publish
-- rights, /live/end and moderation follow it) or put words in another
-- user's mouth (a message's user_id, room_name or created_at). Nothing the
-- functions run, in this release or the one before, writes those columns:
-- a stream's identity and owner are fixed at its INSERT, a message's too.
-- UPDATE is now granted on exactly the columns they write, which is also
-- what `SELECT … FOR UPDATE` needs (UPDATE on at least one column).
--
-- live_streams: the live flag and end time (end, the reconciler, the
-- webhook's room_finished), the debounced viewer count and when it was
-- written (the flusher), the room instance and its closing and missing
-- marks (start, the webhook, the reconciler).
-- live_messages: a deletion blanks the text and says when and by whom.

REVOKE UPDATE ON TABLE live_streams, live_messages FROM live_api;
GRANT UPDATE (is_live, ended_at, viewer_count, viewer_count_written_at,
              room_sid, room_closed_at, room_missing_since)
    ON TABLE live_streams TO live_api;
GRANT UPDATE (text, deleted_at, deleted_by) ON TABLE live_messages TO live_api;
