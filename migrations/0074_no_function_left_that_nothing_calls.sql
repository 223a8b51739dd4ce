-- Two functions the functions' role can still execute that no deployed
-- binary calls, each weaker than what replaced it:
--
-- live_sync_sessions_as_listed (0047's name for 0029's body) was only ever
-- called from inside live_sync_sessions, and since 0054 nothing calls it. It
-- syncs without the room's standing lock (0047) or the one-sync-per-room
-- lock (0053), without the stage's return time (0054) and with the plans
-- 0066 replaced: called, it could deadlock with an end.
--
-- live_chat_post (0017) stored a message without looking at the stream,
-- the author's ban or mute, or the chat rate limit, which its callers
-- checked in statements of their own; 0022 replaced it with live_chat_say,
-- which checks them under the room's standing lock. The binaries that
-- called it predate 0022 and cannot run against this schema.
--
-- The other superseded overloads stay: the previous release's functions
-- call them while a deploy runs (the migrations first, then the code).

DROP FUNCTION live_sync_sessions_as_listed(TEXT, TIMESTAMPTZ, TEXT[], TEXT[], BOOLEAN[], TEXT[]);
DROP FUNCTION live_chat_post(TEXT, UUID, TEXT);
