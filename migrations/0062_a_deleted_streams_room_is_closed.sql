-- A stream deleted while its LiveKit room is open (its streamer's account
-- deleted mid-broadcast, the cascade of 0002/0046) left that room open and
-- unowned: no row for the reconciler to close it by, every later webhook
-- ignored as another room's, the deleted streamer still broadcasting to
-- whoever stayed (LiveKit refreshes a connected participant's token), and
-- the name free for anyone's next start, whose CreateRoom would find that
-- room and keep them in it.
--
-- Its name is now claimed for good (claimed_at 'infinity', which no start
-- may take over and the claims' prune never reaches, 0027) until the room
-- is closed: a start of that name is refused as taken, and the reconciler
-- lists it with the rooms of ended streams it still has to close
-- (`DeleteRoom`), then lets the claim go. A stream whose room was already
-- confirmed closed claims nothing.
--
-- The trigger fires in whatever session deletes the row (Supabase's
-- supabase_auth_admin, search path `auth`, no privilege on our tables), so
-- it runs as its owner with a fixed search path, as 0046's does.

CREATE FUNCTION live_deleted_stream_keeps_its_room_name() RETURNS TRIGGER
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    INSERT INTO live_room_claims AS c (room_name, streamer_id, claimed_at)
    VALUES (OLD.id, OLD.streamer_id, 'infinity')
    ON CONFLICT (room_name) DO UPDATE SET streamer_id = excluded.streamer_id, claimed_at = 'infinity';
    RETURN NULL;
END
$$;

CREATE TRIGGER live_deleted_stream_keeps_its_room_name
AFTER DELETE ON live_streams
FOR EACH ROW WHEN (OLD.room_closed_at IS NULL)
EXECUTE FUNCTION live_deleted_stream_keeps_its_room_name();

CALL live_revoke_from_api_roles(ARRAY[
    'live_deleted_stream_keeps_its_room_name()'
]::REGPROCEDURE[]);
