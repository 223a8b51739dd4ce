-- A stream the reconciler ends because LiveKit stopped listing its room was
-- recorded with its room closed, though nothing had closed it: LiveKit's
-- listing was the only witness. A room missed by a listing (a node that
-- answered without it, a clock a failed run left running) could still be
-- open, its host still broadcasting to a stream the database had ended, and
-- nothing retried closing it: neither the reconciler (it closes rooms whose
-- room_closed_at is NULL) nor /live/end (it calls DeleteRoom only for rooms
-- not yet closed). Now such an end leaves room_closed_at NULL, so the
-- reconciler's next run closes the room with DeleteRoom (a room already gone
-- answers NotFound, which counts as closed) and records it then. Ends that
-- LiveKit told (room_finished, p_grace NULL) still record the room closed.
-- Whole body of 0029's live_finish_stream; what changed is marked.

CREATE OR REPLACE FUNCTION live_finish_stream(p_room TEXT, p_grace INTERVAL) RETURNS BOOLEAN
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE live_streams
    SET is_live = false,
        ended_at = CASE WHEN p_grace IS NULL THEN now() ELSE least(room_missing_since, now()) END,
        -- Changed: closed only when LiveKit said so.
        room_closed_at = CASE WHEN p_grace IS NULL THEN coalesce(room_closed_at, now()) ELSE room_closed_at END
    WHERE id = p_room AND is_live
      AND (p_grace IS NULL OR room_missing_since <= now() - p_grace);
    IF FOUND THEN
        PERFORM live_close_counts(p_room);
        RETURN true;
    END IF;
    IF p_grace IS NULL THEN
        UPDATE live_streams SET room_closed_at = now() WHERE id = p_room AND room_closed_at IS NULL;
    END IF;
    RETURN false;
END
$$;
-- CREATE OR REPLACE keeps the privileges 0009 and 0012 set.
