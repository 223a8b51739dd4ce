-- A screen that follows a room's chat through Supabase Realtime (outside the
-- room: the room itself gets a chat_deleted packet) never learned that a
-- message was deleted. Realtime checks a change against the subscriber's
-- policies on the new row, and the policy hides deleted messages (0006), so
-- the deleting UPDATE reached nobody and the text stayed on those screens.
--
-- Every deletion now also writes a tombstone: the message's id, its room and
-- when, nothing of its text or its author. Signed-in users may read
-- tombstones (they say only that a message they may have seen is gone), and
-- Realtime publishes their inserts: a client drops the message a tombstone
-- names. Deleted messages stay hidden, their text blanked and kept only in
-- live_message_deletions. A tombstone goes with its message.

CREATE TABLE live_message_tombstones (
    message_id UUID PRIMARY KEY REFERENCES live_messages (id) ON DELETE CASCADE,
    room_name  TEXT NOT NULL,
    deleted_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX live_message_tombstones_room_idx ON live_message_tombstones (room_name, deleted_at);

INSERT INTO live_message_tombstones (message_id, room_name, deleted_at)
SELECT id, room_name, deleted_at FROM live_messages WHERE deleted_at IS NOT NULL;

ALTER TABLE live_message_tombstones ENABLE ROW LEVEL SECURITY;
CALL live_revoke_tables_from_api_roles(ARRAY['live_message_tombstones']::REGCLASS[]);
CREATE POLICY live_api_all_rows ON live_message_tombstones TO live_api USING (true) WITH CHECK (true);
GRANT INSERT ON TABLE live_message_tombstones TO live_api;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
        GRANT SELECT ON TABLE live_message_tombstones TO authenticated;
        CREATE POLICY live_message_tombstones_readable_by_users ON live_message_tombstones
            FOR SELECT TO authenticated USING (true);
    END IF;
    -- A publication FOR ALL TABLES (the dashboard can make it one) has the
    -- table already and refuses ADD TABLE (0003 skips a table it has).
    IF EXISTS (SELECT FROM pg_publication WHERE pubname = 'supabase_realtime' AND NOT puballtables) THEN
        ALTER PUBLICATION supabase_realtime ADD TABLE live_message_tombstones;
    END IF;
END
$$;
