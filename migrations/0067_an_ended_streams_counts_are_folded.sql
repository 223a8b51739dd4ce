-- An ended stream kept every row its counting spread over while it was live:
-- 16 count shards (live_viewer_counts) and up to 80 reaction shards
-- (live_reaction_counts, 16 per kind), and its stage rows, one per viewer
-- who ever raised a hand. Once it ended, nothing writes them: a join,
-- leave, sync, tap or stage change reads the stream first and stops at an
-- ended one (a late event's write is refused by the closed shards only
-- while the end itself commits, a race of one statement's length). So the
-- reconciler, as it walks the streams ended longer ago than the session
-- retention (which pruned their unique-viewer marks, 0042), now folds each
-- one's shards into shard 0 and deletes its stage rows: about a tenth of
-- what such a stream kept, with every figure of its stats the same (sums
-- add up, the peak keeps its earliest moment, and the stats read sums and
-- maxima over however many shards there are).
--
-- live_fold_ended_streams(rooms) folds the given streams that ended more
-- than an hour ago (never a live one, whatever it is given) in two
-- statements, at most 96 rows a stream. The functions' role gets DELETE
-- on the three tables; it could already rewrite every row of them.

CREATE FUNCTION live_fold_ended_streams(p_rooms TEXT[]) RETURNS INTEGER
LANGUAGE plpgsql
AS $$
DECLARE
    v_rooms TEXT[];
BEGIN
    SELECT coalesce(array_agg(s.id), '{}') INTO v_rooms
    FROM live_streams s
    WHERE s.id = ANY (p_rooms) AND NOT s.is_live AND s.ended_at < now() - interval '1 hour';

    WITH gone AS (
        DELETE FROM live_viewer_counts c
        WHERE c.room_name = ANY (v_rooms) AND c.shard <> 0
        RETURNING c.*
    )
    INSERT INTO live_viewer_counts AS c
        (room_name, shard, viewers, closed, unique_viewers, watch_seconds, present_since_sum,
         peak_seen, peak_seen_at)
    SELECT g.room_name, 0, sum(g.viewers), bool_and(g.closed), sum(g.unique_viewers), sum(g.watch_seconds),
           sum(g.present_since_sum), max(g.peak_seen),
           (array_agg(g.peak_seen_at ORDER BY g.peak_seen DESC, g.peak_seen_at) FILTER (WHERE g.peak_seen > 0))[1]
    FROM gone g
    GROUP BY g.room_name
    ON CONFLICT (room_name, shard) DO UPDATE
    SET viewers = c.viewers + excluded.viewers,
        closed = c.closed AND excluded.closed,
        unique_viewers = c.unique_viewers + excluded.unique_viewers,
        watch_seconds = c.watch_seconds + excluded.watch_seconds,
        present_since_sum = c.present_since_sum + excluded.present_since_sum,
        peak_seen = greatest(c.peak_seen, excluded.peak_seen),
        -- The stats read the highest peak, reached first.
        peak_seen_at = CASE
            WHEN excluded.peak_seen > c.peak_seen THEN excluded.peak_seen_at
            WHEN excluded.peak_seen = c.peak_seen AND excluded.peak_seen > 0
                THEN least(c.peak_seen_at, excluded.peak_seen_at)
            ELSE c.peak_seen_at
        END;

    WITH gone AS (
        DELETE FROM live_reaction_counts r
        WHERE r.room_name = ANY (v_rooms) AND r.shard <> 0
        RETURNING r.room_name, r.kind, r.n
    )
    INSERT INTO live_reaction_counts AS r (room_name, kind, shard, n)
    SELECT g.room_name, g.kind, 0, sum(g.n) FROM gone g GROUP BY g.room_name, g.kind
    ON CONFLICT (room_name, kind, shard) DO UPDATE SET n = r.n + excluded.n;

    RETURN cardinality(v_rooms);
END
$$;

CALL live_revoke_from_api_roles(ARRAY['live_fold_ended_streams(TEXT[])']::REGPROCEDURE[]);
GRANT EXECUTE ON FUNCTION live_fold_ended_streams(TEXT[]) TO live_api;
GRANT DELETE ON TABLE live_viewer_counts, live_reaction_counts, live_stage TO live_api;

-- The walk starts again from the oldest ended stream under its own name, so
-- the streams whose marks were pruned before this release are folded too.
DELETE FROM live_prune_progress WHERE task = 'viewers_seen';
