-- A lost connection marks the user's stage row away_since (0028): their
-- hand, invitation or turn waits STAGE_RETURN_SECONDS for them, then the
-- reconciler clears it. A ban, a removal or a declined invitation that took
-- the last of that standing away left the clock running on a row with
-- nothing to return to; the reconciler's clean-up, finding it later, then
-- cleared whatever the user had since put there (a hand raised before their
-- join was told). A row with no standing now has no clock, whoever takes
-- the standing away; a rejoin still clears it as before.

CREATE FUNCTION live_stage_nothing_to_return_to() RETURNS TRIGGER
LANGUAGE plpgsql
AS $$
BEGIN
    NEW.away_since := NULL;
    RETURN NEW;
END
$$;
CREATE TRIGGER live_stage_nothing_to_return_to
BEFORE UPDATE OF hand_raised_at, invited_at, on_stage_since ON live_stage
FOR EACH ROW
WHEN (NEW.away_since IS NOT NULL
      AND NEW.hand_raised_at IS NULL AND NEW.invited_at IS NULL AND NEW.on_stage_since IS NULL)
EXECUTE FUNCTION live_stage_nothing_to_return_to();

UPDATE live_stage SET away_since = NULL
WHERE away_since IS NOT NULL
  AND hand_raised_at IS NULL AND invited_at IS NULL AND on_stage_since IS NULL;

CALL live_revoke_from_api_roles(ARRAY[
    'live_stage_nothing_to_return_to()'
]::REGPROCEDURE[]);
