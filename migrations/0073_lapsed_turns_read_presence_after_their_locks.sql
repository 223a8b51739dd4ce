-- The pass that ends lapsed stage turns (the reconciler's after each room's
-- sync, and a change refused for a full stage) was one statement: it read
-- each mark of away with its viewer's presence and locked the mark's row,
-- skipping rows held elsewhere. A statement reads with the snapshot it
-- began with, and a row it locks later is read again for itself alone: a
-- guest whose leave committed in between (marking them away anew, their
-- presence gone) was read as still in the room, so the pass cleared the new
-- mark as one their join had raced (0068), and the guest kept a place on
-- the stage that nothing would end.
--
-- live_end_lapsed_away_turns takes the marks first and reads presence in a
-- statement of its own (a PL/pgSQL statement takes a new snapshot), younger
-- than every lock the pass holds: a leave either committed before it and is
-- seen, or waits for the pass to commit before it marks the guest away. A
-- mark taken that no longer qualifies is left as it is. Returns the marks
-- taken (the reconciler's batches go on while a batch is full) and the
-- turns ended.

CREATE FUNCTION live_end_lapsed_away_turns(
    p_room TEXT,
    p_listed TEXT[],
    p_listing_age DOUBLE PRECISION,
    p_stage_return DOUBLE PRECISION,
    p_limit BIGINT,
    OUT taken INTEGER,
    OUT ended INTEGER
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_rooms TEXT[];
    v_users UUID[];
BEGIN
    SELECT coalesce(array_agg(c.room_name), '{}'), coalesce(array_agg(c.user_id), '{}')
    INTO v_rooms, v_users
    FROM (
        SELECT a.room_name, a.user_id
        FROM live_stage a
        LEFT JOIN live_presence p ON p.room_name = a.room_name AND p.identity = a.user_id::text
        WHERE a.away_since IS NOT NULL
          AND (p_room IS NULL OR a.room_name = p_room)
          AND (p.identity IS NOT NULL
               OR (a.away_since < now() - make_interval(secs => p_stage_return + p_listing_age)
                   AND NOT (a.user_id::text = ANY(p_listed))))
        ORDER BY a.on_stage_since IS NULL, a.away_since
        LIMIT p_limit
        FOR UPDATE OF a SKIP LOCKED
    ) c;
    taken := cardinality(v_rooms);

    WITH settled AS (
        UPDATE live_stage g
        SET hand_raised_at = CASE WHEN l.back THEN g.hand_raised_at END,
            invited_at = CASE WHEN l.back THEN g.invited_at END,
            on_stage_since = CASE WHEN l.back THEN g.on_stage_since END,
            away_since = NULL
        FROM (
            SELECT a.room_name, a.user_id, p.identity IS NOT NULL AS back
            FROM unnest(v_rooms, v_users) AS c(room_name, user_id)
            JOIN live_stage a ON a.room_name = c.room_name AND a.user_id = c.user_id
            LEFT JOIN live_presence p ON p.room_name = a.room_name AND p.identity = a.user_id::text
            WHERE a.away_since IS NOT NULL
              AND (p.identity IS NOT NULL
                   OR (a.away_since < now() - make_interval(secs => p_stage_return + p_listing_age)
                       AND NOT (a.user_id::text = ANY(p_listed))))
        ) l
        WHERE g.room_name = l.room_name AND g.user_id = l.user_id
        RETURNING NOT l.back AS turn_ended
    )
    SELECT count(*) FILTER (WHERE turn_ended) INTO ended FROM settled;
END
$$;

CALL live_revoke_from_api_roles(ARRAY[
    'live_end_lapsed_away_turns(TEXT, TEXT[], DOUBLE PRECISION, DOUBLE PRECISION, BIGINT)'
]::REGPROCEDURE[]);
GRANT EXECUTE ON FUNCTION
    live_end_lapsed_away_turns(TEXT, TEXT[], DOUBLE PRECISION, DOUBLE PRECISION, BIGINT)
    TO live_api;
