-- A join no longer locks its stream's row.
--
-- 0009 took the count off the stream's row, but every new session, presence
-- and first-time viewer is an INSERT into a table with a foreign key to
-- live_streams, and Postgres checks each with SELECT ... FOR KEY SHARE on the
-- stream's row: one row every join of a viral room writes a lock into. With
-- many at once the lock becomes a MultiXact of every open join, rewritten by
-- each new one under the exclusive content lock of the row's page. Measured
-- with pgbench on durable Postgres (30 clients, as many as the template's
-- webhook containers, live_participant_event joins into one room), most
-- sampled backends waited on LWLock:BufferContent and MultiXact buffers, and
-- joins per second fell as clients were added: 1,647/s with 4, 1,173/s with
-- 8, 1,241/s with 30. Without the three keys below the BufferContent waits
-- are gone (4 sampled waits in 20 samples of pg_stat_activity instead of
-- 269) and what joins wait for is each other's count shard (16 rows per
-- room; Lock:transactionid) and the commits' WAL flushes; three alternating 8 s rounds: 8 clients 698-1,001
-- against 1,097-1,592 joins/s, 30 clients 990-1,157 against 974-1,390.
--
-- The rows these keys protected are still removed with their stream: a
-- trigger deletes them as ON DELETE CASCADE did, and refuses to change the id
-- of a stream that has any, as the keys' NO ACTION did. What the keys checked
-- on insert, that the stream exists, live_participant_event and
-- live_sync_sessions check in the same transaction (they read the stream and
-- write nothing for one that is not live). Neither the API nor any function
-- deletes a stream; an operator should end one before deleting it, since a
-- join already past that read when the stream row goes could leave rows of a
-- room that no longer exists (nothing reads them; closed sessions expire with
-- the reconciler's retention).

ALTER TABLE live_participant_sessions DROP CONSTRAINT live_participant_sessions_room_name_fkey;
ALTER TABLE live_presence DROP CONSTRAINT live_presence_room_name_fkey;
ALTER TABLE live_viewers_seen DROP CONSTRAINT live_viewers_seen_room_name_fkey;

CREATE FUNCTION live_stream_viewer_rows_follow() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.id IS DISTINCT FROM OLD.id AND (
            EXISTS (SELECT FROM live_participant_sessions WHERE room_name = OLD.id)
            OR EXISTS (SELECT FROM live_presence WHERE room_name = OLD.id)
            OR EXISTS (SELECT FROM live_viewers_seen WHERE room_name = OLD.id)) THEN
            RAISE EXCEPTION 'stream % still has viewer rows', OLD.id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN NULL;
    END IF;
    DELETE FROM live_participant_sessions WHERE room_name = OLD.id;
    DELETE FROM live_presence WHERE room_name = OLD.id;
    DELETE FROM live_viewers_seen WHERE room_name = OLD.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER live_streams_viewer_rows_follow
AFTER DELETE OR UPDATE OF id ON live_streams
FOR EACH ROW EXECUTE FUNCTION live_stream_viewer_rows_follow();

CALL live_revoke_from_api_roles(ARRAY['live_stream_viewer_rows_follow()']::REGPROCEDURE[]);
