-- Chat through the API (stored, broadcast, rate-limited) and moderation.

ALTER TABLE live_messages
    ADD COLUMN deleted_at TIMESTAMPTZ,
    ADD COLUMN deleted_by UUID,
    ADD CONSTRAINT live_messages_text_length CHECK (char_length(text) BETWEEN 1 AND 500);

-- Reading a room's messages skips deleted ones.
CREATE INDEX live_messages_room_visible_idx
    ON live_messages (room_name, created_at DESC, id DESC) WHERE deleted_at IS NULL;

-- Who is banned from or muted in which stream. A ban refuses new tokens and
-- chat for that stream; a mute refuses chat and data publishing.
CREATE TABLE live_room_restrictions (
    room_name  TEXT NOT NULL REFERENCES live_streams (id) ON DELETE CASCADE,
    user_id    UUID NOT NULL,
    banned     BOOLEAN NOT NULL DEFAULT false,
    muted      BOOLEAN NOT NULL DEFAULT false,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_name, user_id)
);

-- Every moderation action: who did what to whom, and when.
CREATE TABLE live_moderation_actions (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_name    TEXT NOT NULL REFERENCES live_streams (id) ON DELETE CASCADE,
    moderator_id UUID NOT NULL,
    target_id    UUID NOT NULL,
    action       TEXT NOT NULL CHECK (action IN ('kick', 'ban', 'unban', 'mute', 'unmute', 'delete_message')),
    message_id   UUID REFERENCES live_messages (id) ON DELETE CASCADE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX live_moderation_actions_room_idx ON live_moderation_actions (room_name, created_at DESC);

-- Sliding-window rate limits shared by every Lambda container: one row per
-- key holding the times of its recent hits (at most `limit` of them).
CREATE TABLE rate_limit_windows (
    key        TEXT PRIMARY KEY,
    hits       TIMESTAMPTZ[] NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX rate_limit_windows_updated_at_idx ON rate_limit_windows (updated_at);
