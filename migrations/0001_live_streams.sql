-- Streams and their chat. A stream row is never deleted by the API: ending a
-- stream sets is_live = false and ended_at.

CREATE TABLE live_streams (
    -- The LiveKit room name; unique forever, because LiveKit briefly hands a new
    -- room the state of a just-deleted room with the same name.
    id             TEXT PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,128}$'),
    streamer_id    UUID NOT NULL,
    title          TEXT NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    is_live        BOOLEAN NOT NULL DEFAULT true,
    viewer_count   INTEGER NOT NULL DEFAULT 0 CHECK (viewer_count >= 0),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    ended_at       TIMESTAMPTZ,
    -- When LiveKit confirmed the room is gone; NULL while /live/end still has to
    -- close it (LiveKit was unreachable when the stream ended).
    room_closed_at TIMESTAMPTZ,
    CONSTRAINT live_streams_ended_at_matches_is_live CHECK (is_live = (ended_at IS NULL))
);

-- Listing live streams, newest first.
CREATE INDEX live_streams_live_created_at_idx ON live_streams (created_at DESC, id DESC) WHERE is_live;
CREATE INDEX live_streams_streamer_id_idx ON live_streams (streamer_id, created_at DESC);

CREATE TABLE live_messages (
    id         UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    room_name  TEXT NOT NULL REFERENCES live_streams (id) ON DELETE CASCADE,
    user_id    UUID NOT NULL,
    text       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Reading a room's messages newest first (keyset: created_at, id).
CREATE INDEX live_messages_room_created_at_idx ON live_messages (room_name, created_at DESC, id DESC);
