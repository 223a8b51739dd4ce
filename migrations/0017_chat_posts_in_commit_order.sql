-- Chat batches skipped a message that committed after a later one.
--
-- A message takes its seq (nextval) when it is inserted and becomes visible
-- when it commits; two posts of one room can commit in the other order (the
-- first one still waiting for its WAL flush when the second is done). A batch
-- that read the room in between sent the second, recorded the room as sent up
-- to it, and the first, committed a moment later with a smaller seq, was never
-- sent: the viral-room benchmark's listener got 12,099 of 12,100 messages.
--
-- Now every post holds a shared advisory lock on its room from before its seq
-- is taken until it commits, and a batch takes the same lock exclusively before
-- it reads: it waits for the posts in flight (never for each other: shared
-- holders do not conflict), and new posts wait behind it for the moment it
-- reads. A volatile PL/pgSQL function reads with a new snapshot per statement,
-- so the read sees every post that held the lock before it, and every seq not
-- yet taken is larger than any it sees. Advisory locks live in the lock
-- manager (no row is written, no MultiXact for many holders) and, taken per
-- transaction, work through a pooler in transaction mode. The key is the pair
-- (1818782568, hashtext(room)): the fixed first number keeps these apart from
-- any other advisory lock; two rooms whose names hash alike only share a
-- queue.

CREATE FUNCTION live_chat_post(p_room TEXT, p_user UUID, p_text TEXT)
RETURNS TABLE (id UUID, room_name TEXT, user_id UUID, text TEXT, created_at TIMESTAMPTZ, seq BIGINT)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1818782568, hashtext(p_room));
    RETURN QUERY
    INSERT INTO live_messages AS m (room_name, user_id, text) VALUES (p_room, p_user, p_text)
    RETURNING m.id, m.room_name, m.user_id, m.text, m.created_at, m.seq;
END
$$;

-- The room's messages after p_after in order (at most p_limit), once every
-- post that took its seq before this call has committed or rolled back.
CREATE FUNCTION live_chat_unsent(p_room TEXT, p_after BIGINT, p_limit BIGINT)
RETURNS TABLE (
    id UUID, room_name TEXT, user_id UUID, text TEXT, created_at TIMESTAMPTZ, seq BIGINT, deleted BOOLEAN
)
LANGUAGE plpgsql
AS $$
#variable_conflict use_column
BEGIN
    PERFORM pg_advisory_xact_lock(1818782568, hashtext(p_room));
    RETURN QUERY
    SELECT m.id, m.room_name, m.user_id, m.text, m.created_at, m.seq, m.deleted_at IS NOT NULL
    FROM live_messages AS m
    WHERE m.room_name = p_room AND m.seq > p_after
    ORDER BY m.seq
    LIMIT p_limit;
END
$$;

-- Supabase's default privileges grant every new routine to anon and
-- authenticated (see 0006), and Postgres grants it to PUBLIC. Migrations up
-- to here each revoked those grants with a loop of their own; this procedure
-- is that loop, for this migration and the ones after it. It skips the roles
-- a bare Postgres does not have, and it restricts itself first: only the
-- migrating role (its owner) may call it.
CREATE PROCEDURE live_revoke_from_api_roles(p_routines REGPROCEDURE[])
LANGUAGE plpgsql
AS $$
DECLARE
    grantee TEXT;
    routine REGPROCEDURE;
BEGIN
    FOREACH grantee IN ARRAY ARRAY['PUBLIC', 'anon', 'authenticated'] LOOP
        IF grantee = 'PUBLIC' OR EXISTS (SELECT FROM pg_roles WHERE rolname = grantee) THEN
            FOREACH routine IN ARRAY p_routines LOOP
                EXECUTE format('REVOKE ALL ON ROUTINE %s FROM %s', routine, grantee);
            END LOOP;
        END IF;
    END LOOP;
END
$$;

CALL live_revoke_from_api_roles(ARRAY[
    'live_revoke_from_api_roles(REGPROCEDURE[])',
    'live_chat_post(TEXT, UUID, TEXT)',
    'live_chat_unsent(TEXT, BIGINT, BIGINT)'
]::REGPROCEDURE[]);
GRANT EXECUTE ON FUNCTION live_chat_post(TEXT, UUID, TEXT), live_chat_unsent(TEXT, BIGINT, BIGINT) TO live_api;
