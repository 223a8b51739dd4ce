-- Viewer counts from LiveKit webhooks, and the room lifecycle.

-- One row per participant session (LiveKit's participant sid), so the count
-- follows state rather than arithmetic on events: a duplicate, late or
-- out-of-order event can neither double-count nor go negative. A session is
-- present once its join was seen and until its leave was seen; a leave that
-- arrives before its join keeps the session gone.
CREATE TABLE live_participant_sessions (
    room_name TEXT NOT NULL REFERENCES live_streams (id) ON DELETE CASCADE,
    sid       TEXT NOT NULL,
    identity  TEXT NOT NULL,
    -- false for the streamer and for hidden participants (recorders, bots)
    counted   BOOLEAN NOT NULL,
    joined    BOOLEAN NOT NULL DEFAULT false,
    left_at   TIMESTAMPTZ,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_name, sid)
);

CREATE INDEX live_participant_sessions_present_idx
    ON live_participant_sessions (room_name, identity) WHERE joined AND left_at IS NULL AND counted;

-- Webhook event ids already applied: LiveKit retries and may deliver twice.
CREATE TABLE live_webhook_events (
    id          TEXT PRIMARY KEY,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX live_webhook_events_received_at_idx ON live_webhook_events (received_at);

-- Set by the reconciler when LiveKit no longer has the room of a live stream;
-- the stream ends once the room has been gone for the grace period.
ALTER TABLE live_streams ADD COLUMN room_missing_since TIMESTAMPTZ;

-- The app follows viewer counts and chat through Supabase Realtime. Where the
-- supabase_realtime publication exists (a Supabase database), publish both
-- tables; on a bare Postgres there is nothing to do.
DO $$
DECLARE
    wanted TEXT;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'supabase_realtime') THEN
        FOREACH wanted IN ARRAY ARRAY['live_streams', 'live_messages'] LOOP
            IF NOT EXISTS (
                SELECT 1 FROM pg_publication_tables
                WHERE pubname = 'supabase_realtime' AND schemaname = current_schema() AND tablename = wanted
            ) THEN
                EXECUTE format('ALTER PUBLICATION supabase_realtime ADD TABLE %I', wanted);
            END IF;
        END LOOP;
    END IF;
END
$$;
