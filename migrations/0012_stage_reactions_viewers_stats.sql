-- Interactive live: guests on stage, reactions, who is watching, and stream
-- stats, all kept as events arrive on the counting design of 0009: what a
-- busy room writes per event is sharded, and the stream's row is not locked.
--
--   live_presence.display_name  who is watching, as LiveKit names them
--   live_viewer_counts          per shard, beside the count: unique viewers,
--                               watch time of those who left, and the sum of
--                               the present ones' arrival times, so the
--                               watch time of a live stream is 16 rows away
--   live_viewers_seen           identities ever present (unique viewers)
--   live_stream_stats           what changes rarely: the peak (sampled with
--                               the Realtime copy, at most once a second)
--                               and stage guests
--   live_chat_broadcasts        chat messages sent, once per chat batch
--   live_stage                  raised hands, invitations, turns on stage
--   live_reaction_counts        reactions per kind in 16 shards (by user)
--   live_reaction_broadcasts    what the room was last told, and the lease
--                               that lets one tap every 250 ms tell it more

ALTER TABLE live_presence ADD COLUMN display_name TEXT;
CREATE INDEX live_presence_joined_idx ON live_presence (room_name, joined_at, identity);

ALTER TABLE live_viewer_counts
    ADD COLUMN unique_viewers INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN watch_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN present_since_sum DOUBLE PRECISION NOT NULL DEFAULT 0;

CREATE TABLE live_viewers_seen (
    room_name TEXT NOT NULL REFERENCES live_streams (id) ON DELETE CASCADE,
    identity  TEXT NOT NULL,
    PRIMARY KEY (room_name, identity)
);

CREATE TABLE live_stream_stats (
    room_name     TEXT PRIMARY KEY REFERENCES live_streams (id) ON DELETE CASCADE,
    peak_viewers  INTEGER NOT NULL DEFAULT 0,
    peak_at       TIMESTAMPTZ,
    stage_guests  INTEGER NOT NULL DEFAULT 0
);

-- Chat messages, counted by the batch that sends them, on the row the batch
-- already writes (a chat post never waits on a lock the stats hold).
ALTER TABLE live_chat_broadcasts ADD COLUMN messages_sent BIGINT NOT NULL DEFAULT 0;

CREATE TABLE live_stage (
    room_name      TEXT NOT NULL REFERENCES live_streams (id) ON DELETE CASCADE,
    user_id        UUID NOT NULL,
    hand_raised_at TIMESTAMPTZ,
    invited_at     TIMESTAMPTZ,
    on_stage_since TIMESTAMPTZ,
    -- Counted once in stage_guests, however often they come back.
    was_on_stage   BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (room_name, user_id)
);
CREATE INDEX live_stage_hands_idx ON live_stage (room_name, hand_raised_at, user_id)
    WHERE hand_raised_at IS NOT NULL AND invited_at IS NULL AND on_stage_since IS NULL;

CREATE TABLE live_reaction_counts (
    room_name TEXT NOT NULL REFERENCES live_streams (id) ON DELETE CASCADE,
    kind      TEXT NOT NULL CHECK (kind IN ('heart', 'clap', 'laugh', 'wow', 'fire')),
    shard     SMALLINT NOT NULL CHECK (shard BETWEEN 0 AND 15),
    n         BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (room_name, kind, shard)
);
CREATE TABLE live_reaction_broadcasts (
    room_name   TEXT PRIMARY KEY REFERENCES live_streams (id) ON DELETE CASCADE,
    -- The totals per kind the room has been told.
    sent        JSONB NOT NULL DEFAULT '{}',
    lease_until TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);

-- What can be recovered of earlier streams: who was ever counted, the
-- present viewers' arrival, chat messages sent. Watch time before this migration
-- is not known (sessions did not keep it) and starts at 0.
INSERT INTO live_viewers_seen (room_name, identity)
SELECT DISTINCT room_name, identity FROM live_participant_sessions WHERE counted AND joined;
INSERT INTO live_viewer_counts AS c (room_name, shard, unique_viewers, closed)
SELECT v.room_name, hashtext(v.identity) & 15, count(*), NOT s.is_live
FROM live_viewers_seen v JOIN live_streams s ON s.id = v.room_name
GROUP BY v.room_name, hashtext(v.identity) & 15, s.is_live
ON CONFLICT (room_name, shard) DO UPDATE SET unique_viewers = EXCLUDED.unique_viewers;
UPDATE live_viewer_counts c SET present_since_sum = p.since
FROM (SELECT room_name, hashtext(identity) & 15 AS shard, sum(extract(epoch FROM joined_at)) AS since
      FROM live_presence GROUP BY 1, 2) p
WHERE c.room_name = p.room_name AND c.shard = p.shard;
INSERT INTO live_stream_stats (room_name, peak_viewers, peak_at)
SELECT s.id, s.viewer_count, CASE WHEN s.viewer_count > 0 THEN now() END FROM live_streams s;
UPDATE live_chat_broadcasts b
SET messages_sent = (SELECT count(*) FROM live_messages m WHERE m.room_name = b.room_name AND m.seq <= b.sent_up_to);

ALTER TABLE live_viewers_seen ENABLE ROW LEVEL SECURITY;
ALTER TABLE live_stream_stats ENABLE ROW LEVEL SECURITY;
ALTER TABLE live_stage ENABLE ROW LEVEL SECURITY;
ALTER TABLE live_reaction_counts ENABLE ROW LEVEL SECURITY;
ALTER TABLE live_reaction_broadcasts ENABLE ROW LEVEL SECURITY;
CREATE POLICY live_api_all_rows ON live_viewers_seen TO live_api USING (true) WITH CHECK (true);
CREATE POLICY live_api_all_rows ON live_stream_stats TO live_api USING (true) WITH CHECK (true);
CREATE POLICY live_api_all_rows ON live_stage TO live_api USING (true) WITH CHECK (true);
CREATE POLICY live_api_all_rows ON live_reaction_counts TO live_api USING (true) WITH CHECK (true);
CREATE POLICY live_api_all_rows ON live_reaction_broadcasts TO live_api USING (true) WITH CHECK (true);
GRANT SELECT, INSERT ON TABLE live_viewers_seen TO live_api;
GRANT SELECT, INSERT, UPDATE ON TABLE
    live_stream_stats, live_stage, live_reaction_counts, live_reaction_broadcasts TO live_api;

-- The identity as a user id, when it is one (our tokens' identities are).
CREATE FUNCTION live_identity_user(p_identity TEXT) RETURNS UUID
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE WHEN p_identity ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                THEN p_identity::uuid END
$$;

-- One session's change on the session and the identity's presence (as in
-- 0011), now also saying what the stats need: whether the identity came for
-- the first time, its arrival (epoch seconds) when it came or went, and how
-- long a departing one watched. Leaving the room (the identity's last
-- session) lowers their hand, voids an invitation and ends a turn on stage.
DROP FUNCTION live_session_change(TEXT, TEXT, TEXT, BOOLEAN, TEXT);
DROP FUNCTION live_presence_change(TEXT, TEXT, TEXT, BOOLEAN, TEXT);
CREATE FUNCTION live_presence_change(
    p_room TEXT,
    p_sid TEXT,
    p_identity TEXT,
    p_counted BOOLEAN,
    p_change TEXT,
    p_name TEXT,
    OUT delta INTEGER,
    OUT first_time BOOLEAN,
    OUT arrived DOUBLE PRECISION,
    OUT watched DOUBLE PRECISION
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_session live_participant_sessions%ROWTYPE;
    v_was_present BOOLEAN;
    v_is_present BOOLEAN := NULL;
    v_sessions INTEGER;
    v_joined_at TIMESTAMPTZ;
BEGIN
    delta := 0;
    first_time := false;
    arrived := 0;
    watched := 0;
    LOOP
        SELECT * INTO v_session FROM live_participant_sessions
        WHERE room_name = p_room AND sid = p_sid
        FOR UPDATE;
        EXIT WHEN FOUND;
        INSERT INTO live_participant_sessions (room_name, sid, identity, counted, joined, left_at)
        VALUES (p_room, p_sid, p_identity, p_counted, p_change IN ('join', 'reopen'),
                CASE WHEN p_change IN ('join', 'reopen') THEN NULL ELSE now() END)
        ON CONFLICT (room_name, sid) DO NOTHING;
        IF FOUND THEN
            v_was_present := false;
            v_is_present := p_change IN ('join', 'reopen');
            EXIT;
        END IF;
    END LOOP;
    IF v_is_present IS NULL THEN
        v_was_present := v_session.joined AND v_session.left_at IS NULL;
        IF p_change = 'join' THEN
            UPDATE live_participant_sessions SET joined = true, updated_at = now()
            WHERE room_name = p_room AND sid = p_sid;
            v_is_present := v_session.left_at IS NULL;
        ELSIF p_change = 'reopen' THEN
            UPDATE live_participant_sessions
            SET joined = true, updated_at = now(),
                left_at = CASE WHEN closed_by_reconciler THEN NULL ELSE left_at END,
                closed_by_reconciler = false
            WHERE room_name = p_room AND sid = p_sid;
            v_is_present := v_session.left_at IS NULL OR v_session.closed_by_reconciler;
        ELSE
            UPDATE live_participant_sessions
            SET left_at = coalesce(left_at, now()), updated_at = now(),
                closed_by_reconciler = (p_change = 'close' AND left_at IS NULL)
                                       OR (closed_by_reconciler AND p_change = 'close')
            WHERE room_name = p_room AND sid = p_sid;
            v_is_present := false;
        END IF;
    END IF;

    IF v_was_present = v_is_present OR NOT coalesce(v_session.counted, p_counted) THEN
        RETURN;
    END IF;
    IF v_is_present THEN
        INSERT INTO live_presence AS p (room_name, identity, sessions, display_name)
        VALUES (p_room, p_identity, 1, nullif(p_name, ''))
        ON CONFLICT (room_name, identity) DO UPDATE
        SET sessions = p.sessions + 1, display_name = coalesce(EXCLUDED.display_name, p.display_name)
        RETURNING sessions, joined_at INTO v_sessions, v_joined_at;
        IF v_sessions = 1 THEN
            delta := 1;
            arrived := extract(epoch FROM v_joined_at);
            INSERT INTO live_viewers_seen (room_name, identity) VALUES (p_room, p_identity)
            ON CONFLICT DO NOTHING;
            first_time := FOUND;
        END IF;
    ELSE
        UPDATE live_presence SET sessions = sessions - 1
        WHERE room_name = p_room AND identity = p_identity AND sessions > 1;
        IF NOT FOUND THEN
            DELETE FROM live_presence WHERE room_name = p_room AND identity = p_identity
            RETURNING joined_at INTO v_joined_at;
            IF FOUND THEN
                delta := -1;
                arrived := extract(epoch FROM v_joined_at);
                watched := greatest(extract(epoch FROM now() - v_joined_at), 0);
                UPDATE live_stage
                SET hand_raised_at = NULL, invited_at = NULL, on_stage_since = NULL
                WHERE room_name = p_room AND user_id = live_identity_user(p_identity)
                  AND (hand_raised_at IS NOT NULL OR invited_at IS NOT NULL OR on_stage_since IS NOT NULL);
            END IF;
        END IF;
    END IF;
END
$$;

-- Adds to one of the room's shards: the count, unique viewers, the present
-- viewers' arrivals and the watch time of those who left; nothing once the
-- stream has ended (its shards are closed). Returns whether it did.
DROP FUNCTION live_count_add(TEXT, INTEGER, INTEGER);
CREATE FUNCTION live_count_add(
    p_room TEXT,
    p_shard INTEGER,
    p_delta INTEGER,
    p_unique INTEGER,
    p_arrivals DOUBLE PRECISION,
    p_watched DOUBLE PRECISION
) RETURNS BOOLEAN
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO live_viewer_counts AS c (room_name, shard, viewers, unique_viewers, present_since_sum, watch_seconds)
    VALUES (p_room, p_shard, greatest(p_delta, 0), p_unique, p_arrivals, p_watched)
    ON CONFLICT (room_name, shard) DO UPDATE
    SET viewers = greatest(c.viewers + p_delta, 0),
        unique_viewers = c.unique_viewers + p_unique,
        present_since_sum = c.present_since_sum + p_arrivals,
        watch_seconds = c.watch_seconds + p_watched
    WHERE NOT c.closed;
    RETURN FOUND;
END
$$;

-- One session's change, its presence and its shard (last: see 0009).
CREATE FUNCTION live_session_change(
    p_room TEXT, p_sid TEXT, p_identity TEXT, p_counted BOOLEAN, p_change TEXT, p_name TEXT
) RETURNS INTEGER
LANGUAGE plpgsql
AS $$
DECLARE
    v RECORD;
BEGIN
    SELECT * INTO v FROM live_presence_change(p_room, p_sid, p_identity, p_counted, p_change, p_name);
    IF v.delta = 0 THEN
        RETURN 0;
    END IF;
    IF NOT live_count_add(p_room, hashtext(p_identity) & 15, v.delta, v.first_time::int,
                          v.delta * v.arrived, v.watched) THEN
        RETURN 0;
    END IF;
    RETURN v.delta;
END
$$;

-- The peak, sampled whenever the Realtime copy is written (at most once a
-- second per room, and by the flusher within about a second of any change).
CREATE FUNCTION live_note_peak(p_room TEXT, p_count INTEGER) RETURNS VOID
LANGUAGE sql
AS $$
    INSERT INTO live_stream_stats AS t (room_name, peak_viewers, peak_at)
    VALUES (p_room, p_count, now())
    ON CONFLICT (room_name) DO UPDATE SET peak_viewers = EXCLUDED.peak_viewers, peak_at = EXCLUDED.peak_at
    WHERE t.peak_viewers < EXCLUDED.peak_viewers
$$;

CREATE OR REPLACE FUNCTION live_write_viewer_count(p_room TEXT) RETURNS INTEGER
LANGUAGE plpgsql
AS $$
DECLARE
    v_written INTEGER;
BEGIN
    UPDATE live_streams s
    SET viewer_count = live_viewer_count(p_room), viewer_count_written_at = clock_timestamp()
    WHERE s.id = (
        SELECT d.id FROM live_streams d
        WHERE d.id = p_room AND d.is_live
          AND d.viewer_count_written_at <= clock_timestamp() - interval '1 second'
        FOR NO KEY UPDATE SKIP LOCKED
    )
      AND s.viewer_count <> live_viewer_count(p_room)
    RETURNING s.viewer_count INTO v_written;
    IF v_written IS NOT NULL THEN
        PERFORM live_note_peak(p_room, v_written);
    END IF;
    RETURN v_written;
END
$$;

CREATE OR REPLACE FUNCTION live_flush_viewer_counts() RETURNS TABLE (room_name TEXT, viewer_count INTEGER)
LANGUAGE sql
AS $$
    WITH written AS (
        UPDATE live_streams s
        SET viewer_count = c.n, viewer_count_written_at = clock_timestamp()
        FROM (SELECT v.room_name, sum(v.viewers)::int AS n FROM live_viewer_counts v GROUP BY v.room_name) c
        WHERE s.id = c.room_name AND s.is_live AND s.viewer_count <> c.n
          AND s.viewer_count_written_at <= clock_timestamp() - interval '1 second'
        RETURNING s.id, s.viewer_count
    ), peaks AS (
        INSERT INTO live_stream_stats AS t (room_name, peak_viewers, peak_at)
        SELECT id, written.viewer_count, now() FROM written
        ON CONFLICT (room_name) DO UPDATE SET peak_viewers = EXCLUDED.peak_viewers, peak_at = EXCLUDED.peak_at
        WHERE t.peak_viewers < EXCLUDED.peak_viewers
    )
    SELECT id, written.viewer_count FROM written
$$;

-- A participant webhook in one statement (as in 0010), now with the display
-- name LiveKit reports, and the participant's stage state (their publish
-- permission and attributes in the room must say the same).
DROP FUNCTION live_participant_event(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, UUID, BOOLEAN);
CREATE FUNCTION live_participant_event(
    p_event_id TEXT,
    p_room TEXT,
    p_room_sid TEXT,
    p_change TEXT,
    p_sid TEXT,
    p_identity TEXT,
    p_user UUID,
    p_hidden BOOLEAN,
    p_name TEXT,
    OUT outcome TEXT,
    OUT streamer_id UUID,
    OUT is_live BOOLEAN,
    OUT banned BOOLEAN,
    OUT muted BOOLEAN,
    OUT hand_raised BOOLEAN,
    OUT invited BOOLEAN,
    OUT on_stage BOOLEAN,
    OUT count_written INTEGER
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_room_sid TEXT;
BEGIN
    IF p_event_id <> '' THEN
        INSERT INTO live_webhook_events (id) VALUES (p_event_id) ON CONFLICT (id) DO NOTHING;
        IF NOT FOUND THEN
            outcome := 'duplicate';
            RETURN;
        END IF;
    END IF;
    SELECT s.streamer_id, s.is_live, s.room_sid INTO streamer_id, is_live, v_room_sid
    FROM live_streams s WHERE s.id = p_room;
    IF NOT FOUND OR (p_room_sid <> '' AND v_room_sid IS NOT NULL AND v_room_sid <> p_room_sid) THEN
        outcome := 'ignored';
        streamer_id := NULL;
        RETURN;
    END IF;
    IF p_user IS NOT NULL THEN
        SELECT r.banned, r.muted INTO banned, muted
        FROM live_room_restrictions r WHERE r.room_name = p_room AND r.user_id = p_user;
    END IF;
    banned := coalesce(banned, false);
    muted := coalesce(muted, false);
    hand_raised := false;
    invited := false;
    on_stage := false;
    IF NOT is_live THEN
        outcome := 'ignored';
        RETURN;
    END IF;
    PERFORM live_session_change(
        p_room, p_sid, p_identity, NOT p_hidden AND p_identity <> streamer_id::text, p_change, p_name);
    IF p_user IS NOT NULL THEN
        SELECT g.hand_raised_at IS NOT NULL, g.invited_at IS NOT NULL, g.on_stage_since IS NOT NULL
        INTO hand_raised, invited, on_stage
        FROM live_stage g WHERE g.room_name = p_room AND g.user_id = p_user;
        hand_raised := coalesce(hand_raised, false);
        invited := coalesce(invited, false);
        on_stage := coalesce(on_stage, false);
    END IF;
    count_written := live_write_viewer_count(p_room);
    outcome := 'applied';
END
$$;

-- The reconciler's listing (as in 0009), with the listed names, and the
-- stats of every session it closes or reopens added to the shards.
DROP FUNCTION live_sync_sessions(TEXT, TIMESTAMPTZ, TEXT[], TEXT[], BOOLEAN[]);
CREATE FUNCTION live_sync_sessions(
    p_room TEXT,
    p_listed_at TIMESTAMPTZ,
    p_sids TEXT[],
    p_identities TEXT[],
    p_counted BOOLEAN[],
    p_names TEXT[]
) RETURNS INTEGER
LANGUAGE plpgsql
AS $$
DECLARE
    v_changed INTEGER := 0;
    v_deltas INTEGER[] := array_fill(0, ARRAY[16]);
    v_unique INTEGER[] := array_fill(0, ARRAY[16]);
    v_arrivals DOUBLE PRECISION[] := array_fill(0::float8, ARRAY[16]);
    v_watched DOUBLE PRECISION[] := array_fill(0::float8, ARRAY[16]);
    v RECORD;
    v_session RECORD;
    v_shard INTEGER;
BEGIN
    IF NOT EXISTS (SELECT FROM live_streams WHERE id = p_room AND is_live) THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM live_participant_sessions
    WHERE room_name = p_room
      AND (sid = ANY (p_sids) OR (joined AND left_at IS NULL AND updated_at < p_listed_at))
    ORDER BY sid
    FOR UPDATE;
    FOR v_session IN
        SELECT sid, identity, counted, 'close' AS change, NULL::text AS name FROM live_participant_sessions
        WHERE room_name = p_room AND joined AND left_at IS NULL
          AND NOT (sid = ANY (p_sids)) AND updated_at < p_listed_at
        UNION ALL
        SELECT listed.sid, listed.identity, listed.counted, 'reopen', listed.name
        FROM unnest(p_sids, p_identities, p_counted, p_names) AS listed (sid, identity, counted, name)
        ORDER BY 1
    LOOP
        SELECT * INTO v FROM live_presence_change(
            p_room, v_session.sid, v_session.identity, v_session.counted, v_session.change, v_session.name);
        IF v.delta <> 0 THEN
            v_shard := (hashtext(v_session.identity) & 15) + 1;
            v_deltas[v_shard] := v_deltas[v_shard] + v.delta;
            v_unique[v_shard] := v_unique[v_shard] + v.first_time::int;
            v_arrivals[v_shard] := v_arrivals[v_shard] + v.delta * v.arrived;
            v_watched[v_shard] := v_watched[v_shard] + v.watched;
            v_changed := v_changed + 1;
        END IF;
    END LOOP;
    FOR v_shard IN 1 .. 16 LOOP
        IF v_deltas[v_shard] <> 0 OR v_unique[v_shard] <> 0 OR v_watched[v_shard] <> 0 THEN
            PERFORM live_count_add(p_room, v_shard - 1, v_deltas[v_shard], v_unique[v_shard],
                                   v_arrivals[v_shard], v_watched[v_shard]);
        END IF;
    END LOOP;
    PERFORM live_write_viewer_count(p_room);
    RETURN v_changed;
END
$$;

-- The stream is over: the present viewers' watch time so far is added, the
-- peak takes the count as it ended, the stage empties, and the shards close
-- at 0. What the stats say now is final.
CREATE OR REPLACE FUNCTION live_close_counts(p_room TEXT) RETURNS VOID
LANGUAGE plpgsql
AS $$
DECLARE
    v_now DOUBLE PRECISION := extract(epoch FROM now());
BEGIN
    PERFORM live_note_peak(p_room, live_viewer_count(p_room));
    INSERT INTO live_viewer_counts AS c (room_name, shard, viewers, closed)
    SELECT p_room, g, 0, true FROM generate_series(0, 15) AS g
    ON CONFLICT (room_name, shard) DO UPDATE
    SET watch_seconds = CASE WHEN c.closed THEN c.watch_seconds
                             ELSE c.watch_seconds + greatest(c.viewers * v_now - c.present_since_sum, 0) END,
        present_since_sum = 0, viewers = 0, closed = true;
    DELETE FROM live_presence WHERE room_name = p_room;
    UPDATE live_participant_sessions SET left_at = now(), updated_at = now()
    WHERE room_name = p_room AND left_at IS NULL;
    UPDATE live_stage SET hand_raised_at = NULL, invited_at = NULL, on_stage_since = NULL
    WHERE room_name = p_room;
    UPDATE live_streams SET viewer_count = 0, viewer_count_written_at = clock_timestamp()
    WHERE id = p_room AND viewer_count <> 0;
END
$$;

-- Chat batches count the messages they cover, in the update that records
-- the batch: once per batch, not per message.
CREATE OR REPLACE FUNCTION live_chat_batch_sent(p_room TEXT, p_sent BIGINT) RETURNS BOOLEAN
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE live_chat_broadcasts b
    SET messages_sent = b.messages_sent + (
            SELECT count(*) FROM live_messages m
            WHERE m.room_name = p_room AND m.seq > b.sent_up_to AND m.seq <= p_sent),
        sent_up_to = greatest(b.sent_up_to, p_sent),
        lease_until = '-infinity'
    WHERE b.room_name = p_room;
    RETURN EXISTS (
        SELECT FROM live_messages m, live_chat_broadcasts b
        WHERE m.room_name = p_room AND b.room_name = p_room AND m.seq > b.sent_up_to
    );
END
$$;

-- /live/token in one statement (as in 0005), now saying whether the caller
-- is on stage (their token then lets them publish camera and microphone) and
-- what the room shows of them (hand raised, invited).
DROP FUNCTION live_token_access(TEXT, UUID, TEXT, FLOAT8, BIGINT);
CREATE FUNCTION live_token_access(
    p_room TEXT,
    p_user UUID,
    p_limit_key TEXT,
    p_window_seconds FLOAT8,
    p_max BIGINT,
    OUT retry_after BIGINT,
    OUT streamer_id UUID,
    OUT is_live BOOLEAN,
    OUT banned BOOLEAN,
    OUT muted BOOLEAN,
    OUT hand_raised BOOLEAN,
    OUT invited BOOLEAN,
    OUT on_stage BOOLEAN
)
LANGUAGE plpgsql
AS $$
BEGIN
    retry_after := rate_limit_hit(p_limit_key, p_window_seconds, p_max);
    IF retry_after IS NOT NULL THEN
        RETURN;
    END IF;
    SELECT s.streamer_id, s.is_live, coalesce(r.banned, false), coalesce(r.muted, false),
           g.hand_raised_at IS NOT NULL, g.invited_at IS NOT NULL, g.on_stage_since IS NOT NULL
    INTO streamer_id, is_live, banned, muted, hand_raised, invited, on_stage
    FROM live_streams AS s
    LEFT JOIN live_room_restrictions AS r ON r.room_name = s.id AND r.user_id = p_user
    LEFT JOIN live_stage AS g ON g.room_name = s.id AND g.user_id = p_user
    WHERE s.id = p_room;
END
$$;

-- A ban takes the user off the stage, whichever path wrote it.
CREATE FUNCTION live_ban_clears_stage() RETURNS TRIGGER
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE live_stage SET hand_raised_at = NULL, invited_at = NULL, on_stage_since = NULL
    WHERE room_name = NEW.room_name AND user_id = NEW.user_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER live_ban_clears_stage
AFTER INSERT OR UPDATE OF banned ON live_room_restrictions
FOR EACH ROW WHEN (NEW.banned) EXECUTE FUNCTION live_ban_clears_stage();

-- One change of the stage, serialised per room (a transaction-scoped
-- advisory lock: the stage changes rarely, and the guest limit must hold
-- under concurrent accepts), by p_actor about p_user:
--   raise, lower      p_actor = p_user, a viewer: their hand
--   invite            the streamer invites p_user, who must be watching
--   accept, decline   the invitee answers
--   remove            the streamer takes p_user off the stage (or cancels
--                     the invitation), or a guest leaves by themselves
-- outcome: 'ok', or why not: 'not_found', 'not_live', 'banned' (the actor, or
-- the invitee), 'not_host', 'host' (the streamer cannot be a guest),
-- 'not_watching', 'not_invited', 'stage_full'. The user's stage state after
-- the change (and whether they are muted) comes back for LiveKit.
CREATE FUNCTION live_stage_change(
    p_room TEXT,
    p_actor UUID,
    p_user UUID,
    p_action TEXT,
    p_max_guests INTEGER,
    OUT outcome TEXT,
    OUT changed BOOLEAN,
    OUT hand_raised_at TIMESTAMPTZ,
    OUT invited_at TIMESTAMPTZ,
    OUT on_stage_since TIMESTAMPTZ,
    OUT muted BOOLEAN
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_streamer UUID;
    v_live BOOLEAN;
    v_actor_banned BOOLEAN;
    v_user_banned BOOLEAN;
    v_stage live_stage%ROWTYPE;
    v_guests INTEGER;
BEGIN
    changed := false;
    SELECT s.streamer_id, s.is_live INTO v_streamer, v_live FROM live_streams s WHERE s.id = p_room;
    IF NOT FOUND THEN
        outcome := 'not_found';
        RETURN;
    END IF;
    IF p_action IN ('invite', 'remove') AND p_actor <> v_streamer AND p_actor <> p_user THEN
        outcome := 'not_host';
        RETURN;
    END IF;
    IF p_action = 'invite' AND p_actor <> v_streamer THEN
        outcome := 'not_host';
        RETURN;
    END IF;
    IF p_action IN ('raise', 'lower', 'accept', 'decline') AND p_actor <> p_user THEN
        RAISE EXCEPTION 'stage action % is the user''s own', p_action;
    END IF;
    IF p_user = v_streamer THEN
        outcome := 'host';
        RETURN;
    END IF;
    SELECT coalesce(bool_or(r.banned) FILTER (WHERE r.user_id = p_actor), false),
           coalesce(bool_or(r.banned) FILTER (WHERE r.user_id = p_user), false),
           coalesce(bool_or(r.muted) FILTER (WHERE r.user_id = p_user), false)
    INTO v_actor_banned, v_user_banned, muted
    FROM live_room_restrictions r WHERE r.room_name = p_room AND r.user_id IN (p_actor, p_user);
    IF v_actor_banned OR (v_user_banned AND p_action NOT IN ('lower', 'decline', 'remove')) THEN
        outcome := 'banned';
        RETURN;
    END IF;
    IF NOT v_live THEN
        outcome := 'not_live';
        RETURN;
    END IF;

    PERFORM pg_advisory_xact_lock(hashtext('live_stage'), hashtext(p_room));
    SELECT * INTO v_stage FROM live_stage g WHERE g.room_name = p_room AND g.user_id = p_user;
    IF NOT FOUND THEN
        v_stage.room_name := p_room;
        v_stage.user_id := p_user;
        v_stage.was_on_stage := false;
    END IF;
    outcome := 'ok';
    CASE p_action
    WHEN 'raise' THEN
        IF v_stage.hand_raised_at IS NULL AND v_stage.invited_at IS NULL AND v_stage.on_stage_since IS NULL THEN
            v_stage.hand_raised_at := now();
            changed := true;
        END IF;
    WHEN 'lower' THEN
        IF v_stage.hand_raised_at IS NOT NULL THEN
            v_stage.hand_raised_at := NULL;
            changed := true;
        END IF;
    WHEN 'invite' THEN
        IF v_stage.on_stage_since IS NULL AND v_stage.invited_at IS NULL THEN
            IF NOT EXISTS (SELECT FROM live_presence p
                           WHERE p.room_name = p_room AND p.identity = p_user::text) THEN
                outcome := 'not_watching';
                RETURN;
            END IF;
            SELECT count(*) INTO v_guests FROM live_stage g
            WHERE g.room_name = p_room AND g.on_stage_since IS NOT NULL;
            IF v_guests >= p_max_guests THEN
                outcome := 'stage_full';
                RETURN;
            END IF;
            v_stage.invited_at := now();
            changed := true;
        END IF;
    WHEN 'accept' THEN
        IF v_stage.on_stage_since IS NULL THEN
            IF v_stage.invited_at IS NULL THEN
                outcome := 'not_invited';
                RETURN;
            END IF;
            SELECT count(*) INTO v_guests FROM live_stage g
            WHERE g.room_name = p_room AND g.on_stage_since IS NOT NULL;
            IF v_guests >= p_max_guests THEN
                outcome := 'stage_full';
                RETURN;
            END IF;
            IF NOT v_stage.was_on_stage THEN
                INSERT INTO live_stream_stats AS t (room_name, stage_guests) VALUES (p_room, 1)
                ON CONFLICT (room_name) DO UPDATE SET stage_guests = t.stage_guests + 1;
            END IF;
            v_stage.on_stage_since := now();
            v_stage.invited_at := NULL;
            v_stage.hand_raised_at := NULL;
            v_stage.was_on_stage := true;
            changed := true;
        END IF;
    WHEN 'decline' THEN
        IF v_stage.invited_at IS NOT NULL THEN
            v_stage.invited_at := NULL;
            v_stage.hand_raised_at := NULL;
            changed := true;
        END IF;
    WHEN 'remove' THEN
        IF v_stage.on_stage_since IS NOT NULL OR v_stage.invited_at IS NOT NULL THEN
            v_stage.on_stage_since := NULL;
            v_stage.invited_at := NULL;
            v_stage.hand_raised_at := NULL;
            changed := true;
        END IF;
    ELSE
        RAISE EXCEPTION 'unknown stage action %', p_action;
    END CASE;
    IF changed THEN
        INSERT INTO live_stage AS g (room_name, user_id, hand_raised_at, invited_at, on_stage_since, was_on_stage)
        VALUES (p_room, p_user, v_stage.hand_raised_at, v_stage.invited_at, v_stage.on_stage_since,
                v_stage.was_on_stage)
        ON CONFLICT (room_name, user_id) DO UPDATE
        SET hand_raised_at = EXCLUDED.hand_raised_at, invited_at = EXCLUDED.invited_at,
            on_stage_since = EXCLUDED.on_stage_since, was_on_stage = EXCLUDED.was_on_stage;
    END IF;
    hand_raised_at := v_stage.hand_raised_at;
    invited_at := v_stage.invited_at;
    on_stage_since := v_stage.on_stage_since;
END
$$;

-- One reaction, in one statement: the caller's rate limit, the stream and
-- their ban, one shard of the room's counts (by user, so taps rarely wait
-- on one another), and, when the room's broadcast lease is free (it lasts
-- p_interval), the lease and what the room has not been told yet. The
-- lease row is taken with SKIP LOCKED: a tap never waits for another's
-- broadcast. counts: the kinds added since the last broadcast (NULL when
-- this tap does not broadcast); totals: every kind so far.
CREATE FUNCTION live_react(
    p_room TEXT,
    p_user UUID,
    p_kind TEXT,
    p_limit_key TEXT,
    p_window_seconds FLOAT8,
    p_max BIGINT,
    p_interval INTERVAL,
    OUT retry_after BIGINT,
    OUT streamer_id UUID,
    OUT is_live BOOLEAN,
    OUT banned BOOLEAN,
    OUT counts JSONB,
    OUT totals JSONB
)
LANGUAGE plpgsql
AS $$
BEGIN
    retry_after := rate_limit_hit(p_limit_key, p_window_seconds, p_max);
    IF retry_after IS NOT NULL THEN
        RETURN;
    END IF;
    SELECT s.streamer_id, s.is_live, coalesce(r.banned, false)
    INTO streamer_id, is_live, banned
    FROM live_streams AS s
    LEFT JOIN live_room_restrictions AS r ON r.room_name = s.id AND r.user_id = p_user
    WHERE s.id = p_room;
    IF NOT FOUND OR NOT is_live OR banned THEN
        RETURN;
    END IF;
    INSERT INTO live_reaction_counts AS c (room_name, kind, shard, n)
    VALUES (p_room, p_kind, hashtext(p_user::text) & 15, 1)
    ON CONFLICT (room_name, kind, shard) DO UPDATE SET n = c.n + 1;
    SELECT t.counts, t.totals INTO counts, totals FROM live_reactions_take(p_room, p_interval) t;
END
$$;

-- Takes the room's reaction broadcast lease if it is free, and returns what
-- the room has not been told (and the totals), recording them as told; no
-- row when the lease is held or nothing is new.
CREATE FUNCTION live_reactions_take(p_room TEXT, p_interval INTERVAL)
RETURNS TABLE (counts JSONB, totals JSONB)
LANGUAGE plpgsql
AS $$
DECLARE
    v_sent JSONB;
    v_totals JSONB;
    v_counts JSONB;
BEGIN
    SELECT b.sent INTO v_sent FROM live_reaction_broadcasts b
    WHERE b.room_name = p_room AND b.lease_until <= clock_timestamp()
    FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        IF EXISTS (SELECT FROM live_reaction_broadcasts b WHERE b.room_name = p_room) THEN
            RETURN;
        END IF;
        INSERT INTO live_reaction_broadcasts (room_name) VALUES (p_room) ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        v_sent := '{}';
    END IF;
    SELECT coalesce(jsonb_object_agg(kind, total), '{}') INTO v_totals
    FROM (SELECT c.kind, sum(c.n)::bigint AS total FROM live_reaction_counts c
          WHERE c.room_name = p_room GROUP BY c.kind) k;
    SELECT jsonb_object_agg(t.key, t.value::bigint - coalesce((v_sent ->> t.key)::bigint, 0)) INTO v_counts
    FROM jsonb_each_text(v_totals) t
    WHERE t.value::bigint > coalesce((v_sent ->> t.key)::bigint, 0);
    IF v_counts IS NULL THEN
        RETURN;
    END IF;
    UPDATE live_reaction_broadcasts
    SET sent = v_totals, lease_until = clock_timestamp() + p_interval
    WHERE room_name = p_room;
    counts := v_counts;
    totals := v_totals;
    RETURN NEXT;
END
$$;

-- The flusher's share: every live room whose last taps found the lease held
-- and no tap came after (its counts are ahead of what the room was told).
CREATE FUNCTION live_flush_reactions(p_interval INTERVAL)
RETURNS TABLE (room_name TEXT, counts JSONB, totals JSONB)
LANGUAGE plpgsql
AS $$
DECLARE
    v_room TEXT;
BEGIN
    FOR v_room IN
        SELECT b.room_name FROM live_reaction_broadcasts b
        JOIN live_streams s ON s.id = b.room_name AND s.is_live
        WHERE b.lease_until <= clock_timestamp()
          AND (SELECT sum(c.n) FROM live_reaction_counts c WHERE c.room_name = b.room_name)
              > (SELECT coalesce(sum(e.v::bigint), 0) FROM jsonb_each_text(b.sent) AS e (k, v))
    LOOP
        RETURN QUERY SELECT v_room, t.counts, t.totals FROM live_reactions_take(v_room, p_interval) t;
    END LOOP;
END
$$;

DO $$
DECLARE
    grantee TEXT;
    object TEXT;
BEGIN
    FOREACH grantee IN ARRAY ARRAY['PUBLIC', 'anon', 'authenticated'] LOOP
        IF grantee = 'PUBLIC' OR EXISTS (SELECT FROM pg_roles WHERE rolname = grantee) THEN
            EXECUTE format('REVOKE ALL ON TABLE live_viewers_seen, live_stream_stats, live_stage, '
                           'live_reaction_counts, live_reaction_broadcasts FROM %s', grantee);
            FOREACH object IN ARRAY ARRAY[
                'live_identity_user(TEXT)',
                'live_presence_change(TEXT, TEXT, TEXT, BOOLEAN, TEXT, TEXT)',
                'live_count_add(TEXT, INTEGER, INTEGER, INTEGER, DOUBLE PRECISION, DOUBLE PRECISION)',
                'live_session_change(TEXT, TEXT, TEXT, BOOLEAN, TEXT, TEXT)',
                'live_note_peak(TEXT, INTEGER)',
                'live_write_viewer_count(TEXT)',
                'live_flush_viewer_counts()',
                'live_participant_event(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, UUID, BOOLEAN, TEXT)',
                'live_sync_sessions(TEXT, TIMESTAMPTZ, TEXT[], TEXT[], BOOLEAN[], TEXT[])',
                'live_close_counts(TEXT)',
                'live_chat_batch_sent(TEXT, BIGINT)',
                'live_token_access(TEXT, UUID, TEXT, FLOAT8, BIGINT)',
                'live_ban_clears_stage()',
                'live_stage_change(TEXT, UUID, UUID, TEXT, INTEGER)',
                'live_react(TEXT, UUID, TEXT, TEXT, FLOAT8, BIGINT, INTERVAL)',
                'live_reactions_take(TEXT, INTERVAL)',
                'live_flush_reactions(INTERVAL)'
            ] LOOP
                EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %s', object, grantee);
            END LOOP;
        END IF;
    END LOOP;
END
$$;
GRANT EXECUTE ON FUNCTION
    live_identity_user(TEXT),
    live_presence_change(TEXT, TEXT, TEXT, BOOLEAN, TEXT, TEXT),
    live_count_add(TEXT, INTEGER, INTEGER, INTEGER, DOUBLE PRECISION, DOUBLE PRECISION),
    live_session_change(TEXT, TEXT, TEXT, BOOLEAN, TEXT, TEXT),
    live_note_peak(TEXT, INTEGER),
    live_write_viewer_count(TEXT),
    live_flush_viewer_counts(),
    live_participant_event(TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, UUID, BOOLEAN, TEXT),
    live_sync_sessions(TEXT, TIMESTAMPTZ, TEXT[], TEXT[], BOOLEAN[], TEXT[]),
    live_close_counts(TEXT),
    live_chat_batch_sent(TEXT, BIGINT),
    live_token_access(TEXT, UUID, TEXT, FLOAT8, BIGINT),
    live_stage_change(TEXT, UUID, UUID, TEXT, INTEGER),
    live_react(TEXT, UUID, TEXT, TEXT, FLOAT8, BIGINT, INTERVAL),
    live_reactions_take(TEXT, INTERVAL),
    live_flush_reactions(INTERVAL)
TO live_api;
