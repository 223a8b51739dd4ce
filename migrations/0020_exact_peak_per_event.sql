-- A stream's peak audience, exact per event instead of sampled. 0012 noted
-- the peak only when the Realtime copy of the count was written (at most once
-- a second per room) and at the end, so a crowd that came and went between
-- two writes was missed. A single peak row written by every join would be
-- the hot row 0009 removed, so each count shard keeps the highest total that
-- an event of its own saw: a join reads the other shards' committed counts
-- (no lock; up to 15 small rows) and raises its own shard's peak_seen, on the
-- row it updates anyway. The stream's peak is the highest of its shards'.
-- Under concurrent joins each sees the others' committed counts, so the peak
-- is the highest total any committed state reached, never more.

ALTER TABLE live_viewer_counts
    ADD COLUMN peak_seen INTEGER NOT NULL DEFAULT 0 CHECK (peak_seen >= 0),
    ADD COLUMN peak_seen_at TIMESTAMPTZ;

-- As 0012's, plus the peak: leaves and other changes that add no viewer
-- leave it alone and read nothing more.
CREATE OR REPLACE FUNCTION live_count_add(
    p_room TEXT,
    p_shard INTEGER,
    p_delta INTEGER,
    p_unique INTEGER,
    p_arrivals DOUBLE PRECISION,
    p_watched DOUBLE PRECISION
) RETURNS BOOLEAN
LANGUAGE plpgsql
AS $$
DECLARE
    v_others INTEGER := 0;
BEGIN
    IF p_delta > 0 THEN
        SELECT coalesce(sum(c.viewers), 0)::int INTO v_others
        FROM live_viewer_counts c
        WHERE c.room_name = p_room AND c.shard <> p_shard;
    END IF;
    INSERT INTO live_viewer_counts AS c
        (room_name, shard, viewers, unique_viewers, present_since_sum, watch_seconds, peak_seen, peak_seen_at)
    VALUES (p_room, p_shard, greatest(p_delta, 0), p_unique, p_arrivals, p_watched,
            CASE WHEN p_delta > 0 THEN v_others + p_delta ELSE 0 END,
            CASE WHEN p_delta > 0 THEN now() END)
    ON CONFLICT (room_name, shard) DO UPDATE
    SET viewers = greatest(c.viewers + p_delta, 0),
        unique_viewers = c.unique_viewers + p_unique,
        present_since_sum = c.present_since_sum + p_arrivals,
        watch_seconds = c.watch_seconds + p_watched,
        peak_seen = CASE WHEN p_delta > 0 THEN greatest(c.peak_seen, v_others + c.viewers + p_delta)
                         ELSE c.peak_seen END,
        peak_seen_at = CASE WHEN p_delta > 0 AND v_others + c.viewers + p_delta > c.peak_seen THEN now()
                            ELSE c.peak_seen_at END
    WHERE NOT c.closed;
    RETURN FOUND;
END
$$;
-- CREATE OR REPLACE keeps the privileges 0012 set (live_api only).
