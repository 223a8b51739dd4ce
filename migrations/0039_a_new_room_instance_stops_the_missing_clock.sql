-- A start retried while its room was missing could still be ended as
-- missing. The reconciler starts a clock (room_missing_since) for a live
-- stream whose room LiveKit does not list, and ends the stream once the
-- clock has run for RECONCILE_GRACE_SECONDS, backdated to when it started.
-- A retried /live/start re-creates the room (the README tells the host's app
-- to do so when its room is gone) and records the new instance's sid, but
-- left the clock running: a run that listed the rooms before the retry and
-- reached that room after it ended the stream the retry had just answered
-- 200 for, at the old clock's time, closed its counts there, and never
-- deleted the new room.
--
-- Now recording a new room instance stops the clock, whoever records it.
-- A run with an older listing then starts a fresh clock at most, and the
-- next run finds the room and clears it.

CREATE FUNCTION live_new_room_instance_stops_the_missing_clock() RETURNS TRIGGER
LANGUAGE plpgsql
AS $$
BEGIN
    NEW.room_missing_since := NULL;
    RETURN NEW;
END
$$;
CREATE TRIGGER live_new_room_instance_stops_the_missing_clock
BEFORE UPDATE OF room_sid ON live_streams
FOR EACH ROW WHEN (NEW.room_sid IS DISTINCT FROM OLD.room_sid)
EXECUTE FUNCTION live_new_room_instance_stops_the_missing_clock();

CALL live_revoke_from_api_roles(ARRAY[
    'live_new_room_instance_stops_the_missing_clock()'
]::REGPROCEDURE[]);
