-- A kick removed the participant from the room and left their place on the
-- stage to their leave's webhook, which ends a turn only on the last
-- session's leave. A kicked guest who came straight back (the token they had,
-- or a new one, minted on stage since Postgres still said so) and whose new
-- join was applied before the old session's leave kept the stage, camera
-- and microphone included, until the host noticed.
--
-- A kick now ends their turn, invitation and raised hand as a ban does (0012's
-- live_ban_clears_stage): a trigger on the kick's record, so in the kick's
-- own statement (live_moderate, 0040), under the standing lock its
-- restriction upsert took, and before that statement reads the stage for
-- its answer. They may come back as a viewer.

CREATE FUNCTION live_kick_clears_stage() RETURNS TRIGGER
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE live_stage
    SET hand_raised_at = NULL, invited_at = NULL, on_stage_since = NULL, away_since = NULL
    WHERE room_name = NEW.room_name AND user_id = NEW.target_id
      AND (hand_raised_at IS NOT NULL OR invited_at IS NOT NULL
           OR on_stage_since IS NOT NULL OR away_since IS NOT NULL);
    RETURN NULL;
END
$$;
CREATE TRIGGER live_kick_clears_stage
AFTER INSERT ON live_moderation_actions
FOR EACH ROW WHEN (NEW.action = 'kick') EXECUTE FUNCTION live_kick_clears_stage();

CALL live_revoke_from_api_roles(ARRAY['live_kick_clears_stage()']::REGPROCEDURE[]);
