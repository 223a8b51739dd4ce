-- 0062 claimed a deleted stream's room name in its streamer's name. A start
-- takes over or lets go of its own streamer's claims (0027: the upsert of a
-- claim by the same streamer, the release of a refused one), so that
-- streamer, were they able to start again (a profile deleted and made
-- anew, a row deleted by hand), could take the name back while the room it
-- held was still open, or drop the claim and leave that room with nothing
-- to close it. The claim now belongs to nobody: the nil UUID, nobody's id,
-- which no start can match. Only the reconciler's closing of the room lets
-- it go (it matches the claim by `claimed_at = 'infinity'`).

CREATE OR REPLACE FUNCTION live_deleted_stream_keeps_its_room_name() RETURNS TRIGGER
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    INSERT INTO live_room_claims AS c (room_name, streamer_id, claimed_at)
    VALUES (OLD.id, '00000000-0000-0000-0000-000000000000', 'infinity')
    ON CONFLICT (room_name) DO UPDATE SET streamer_id = excluded.streamer_id, claimed_at = 'infinity';
    RETURN NULL;
END
$$;
-- CREATE OR REPLACE keeps 0062's privileges (none for the API's roles).

UPDATE live_room_claims SET streamer_id = '00000000-0000-0000-0000-000000000000'
WHERE claimed_at = 'infinity';
