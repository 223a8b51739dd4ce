-- Chat history was paged by created_at, the time a post's transaction began,
-- not the order the room received its messages in. A post that waited (for
-- its rate-limit row, behind a batch reading the room, behind an end or a
-- ban) took its seq, and went out in the room's batches, after messages that
-- began later: the history then showed it above them, where a client that
-- had read the newest page and paged back from its oldest message never
-- looked, and in another order than the room had shown. Pages now follow
-- seq, the order the batches send in (migration 0017): the history reads as
-- the room saw it, and a message a client has not yet got is newer than
-- every one it has.
CREATE INDEX live_messages_room_visible_seq_idx
    ON live_messages (room_name, seq DESC) WHERE deleted_at IS NULL;
DROP INDEX live_messages_room_visible_idx;
