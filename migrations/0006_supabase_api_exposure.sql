-- What Supabase's public API may reach, and the role the functions connect as.
--
-- On a Supabase project every table, function and sequence created in
-- `public` is granted to `anon` and `authenticated` (default privileges), and
-- PostgREST serves them to anyone holding the anon key, which ships inside
-- the mobile app. So, for every object of ours:
--   * row-level security is on, and the only policies for app users are the
--     reads the app's Realtime subscriptions need: `live_streams`, and the
--     `live_messages` that are not deleted, for `authenticated` only;
--   * every privilege of PUBLIC, `anon` and `authenticated` is revoked, and
--     `authenticated` gets back SELECT on those two tables alone;
--   * EXECUTE on our functions is revoked from them too (a test lists every
--     function in the schema, so a later migration that forgets fails it).
-- On a bare Postgres without those roles the same statements skip them.
--
-- The functions connect as `live_api`: it owns nothing, has exactly the
-- privileges the handlers use, cannot change the schema, and its sessions
-- carry statement and lock timeouts. Migrations keep running as the owner.

-- The functions' role. Created LOGIN without a password: it cannot log in
-- until the operator sets one (README, "The database role of the functions").
-- Roles belong to the whole cluster, so another database of the same cluster
-- may create it at the same moment: that is fine.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'live_api') THEN
        BEGIN
            CREATE ROLE live_api LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;

-- Per-role settings apply to every session of the role however it connects,
-- a transaction-mode pooler included (startup `options` do not pass through
-- PgBouncer or Supavisor). Below the functions' 8 s request deadline, so
-- Postgres gives up first and the client gets a clean 503:
--   statement_timeout: no statement of the API runs longer;
--   lock_timeout: a request waits this long at most behind a row lock;
--   idle_in_transaction_session_timeout: a transaction left open by a
--     container frozen mid-request releases its locks.
DO $$
DECLARE
    wanted TEXT[] := ARRAY['statement_timeout=5s', 'lock_timeout=2s', 'idle_in_transaction_session_timeout=10s'];
    setting TEXT;
BEGIN
    FOREACH setting IN ARRAY wanted LOOP
        IF NOT EXISTS (
            SELECT FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
            WHERE r.rolname = 'live_api' AND s.setdatabase = 0 AND setting = ANY (s.setconfig)
        ) THEN
            BEGIN
                EXECUTE format('ALTER ROLE live_api SET %s TO %L',
                               split_part(setting, '=', 1), split_part(setting, '=', 2));
            EXCEPTION WHEN internal_error THEN
                -- "tuple concurrently updated": another database's migration
                -- is writing the same settings of the same role right now.
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

-- A deleted message keeps no text where an API user can read it. Realtime
-- sends the new row of an UPDATE to every subscriber allowed to select it,
-- so the row is blanked, and its text kept here, where only the owner (the
-- migrations, the operator) can read it for moderation reviews.
CREATE TABLE live_message_deletions (
    message_id    UUID PRIMARY KEY REFERENCES live_messages (id) ON DELETE CASCADE,
    room_name     TEXT NOT NULL REFERENCES live_streams (id) ON DELETE CASCADE,
    author_id     UUID NOT NULL,
    original_text TEXT NOT NULL,
    deleted_by    UUID NOT NULL,
    deleted_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO live_message_deletions (message_id, room_name, author_id, original_text, deleted_by, deleted_at)
SELECT id, room_name, user_id, text, coalesce(deleted_by, user_id), deleted_at
FROM live_messages
WHERE deleted_at IS NOT NULL;

ALTER TABLE live_messages DROP CONSTRAINT live_messages_text_length;
UPDATE live_messages SET text = '' WHERE deleted_at IS NOT NULL;
ALTER TABLE live_messages
    ADD CONSTRAINT live_messages_text_length CHECK (
        (deleted_at IS NULL AND char_length(text) BETWEEN 1 AND 500)
        OR (deleted_at IS NOT NULL AND text = '')
    );

-- Row-level security everywhere. The owner bypasses it (migrations); every
-- other role sees only what a policy below lets it see.
ALTER TABLE live_streams ENABLE ROW LEVEL SECURITY;
ALTER TABLE live_messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE live_participant_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE live_webhook_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE live_room_restrictions ENABLE ROW LEVEL SECURITY;
ALTER TABLE live_moderation_actions ENABLE ROW LEVEL SECURITY;
ALTER TABLE rate_limit_windows ENABLE ROW LEVEL SECURITY;
ALTER TABLE live_message_deletions ENABLE ROW LEVEL SECURITY;
ALTER TABLE schema_migrations ENABLE ROW LEVEL SECURITY;

-- Nothing for PUBLIC, anon or authenticated, whatever the default
-- privileges granted when the objects were created.
DO $$
DECLARE
    grantee TEXT;
BEGIN
    FOREACH grantee IN ARRAY ARRAY['PUBLIC', 'anon', 'authenticated'] LOOP
        IF grantee = 'PUBLIC' OR EXISTS (SELECT FROM pg_roles WHERE rolname = grantee) THEN
            EXECUTE format(
                'REVOKE ALL ON TABLE live_streams, live_messages, live_participant_sessions,
                     live_webhook_events, live_room_restrictions, live_moderation_actions,
                     rate_limit_windows, live_message_deletions, schema_migrations FROM %s',
                grantee);
            EXECUTE format('REVOKE ALL ON SEQUENCE live_moderation_actions_id_seq FROM %s', grantee);
            EXECUTE format(
                'REVOKE ALL ON FUNCTION rate_limit_hit(TEXT, FLOAT8, BIGINT),
                     live_token_access(TEXT, UUID, TEXT, FLOAT8, BIGINT) FROM %s',
                grantee);
        END IF;
    END LOOP;
END
$$;

-- What the app reads through Supabase (Realtime subscriptions): the streams,
-- and the chat that is not deleted. Signed-in users only; no writes at all.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
        GRANT SELECT ON TABLE live_streams, live_messages TO authenticated;
        CREATE POLICY live_streams_readable_by_users ON live_streams
            FOR SELECT TO authenticated USING (true);
        CREATE POLICY live_messages_visible_to_users ON live_messages
            FOR SELECT TO authenticated USING (deleted_at IS NULL);
    END IF;
END
$$;

-- The functions: exactly the statements the handlers, the webhook and the
-- reconciler run. No DELETE of streams or messages, no TRUNCATE, no DDL, no
-- reading the deletion audit or the migrations' bookkeeping.
GRANT SELECT, INSERT, UPDATE ON TABLE live_streams TO live_api;
GRANT SELECT, INSERT, UPDATE ON TABLE live_messages TO live_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE live_participant_sessions TO live_api;
GRANT SELECT, INSERT, DELETE ON TABLE live_webhook_events TO live_api;
GRANT SELECT, INSERT, UPDATE ON TABLE live_room_restrictions TO live_api;
GRANT INSERT ON TABLE live_moderation_actions TO live_api;
GRANT INSERT ON TABLE live_message_deletions TO live_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE rate_limit_windows TO live_api;
GRANT EXECUTE ON FUNCTION rate_limit_hit(TEXT, FLOAT8, BIGINT),
    live_token_access(TEXT, UUID, TEXT, FLOAT8, BIGINT) TO live_api;

-- RLS applies to live_api too (it is not the owner and has no BYPASSRLS), so
-- it gets one permissive policy per table; the grants above say which
-- commands it may run.
CREATE POLICY live_api_all_rows ON live_streams TO live_api USING (true) WITH CHECK (true);
CREATE POLICY live_api_all_rows ON live_messages TO live_api USING (true) WITH CHECK (true);
CREATE POLICY live_api_all_rows ON live_participant_sessions TO live_api USING (true) WITH CHECK (true);
CREATE POLICY live_api_all_rows ON live_webhook_events TO live_api USING (true) WITH CHECK (true);
CREATE POLICY live_api_all_rows ON live_room_restrictions TO live_api USING (true) WITH CHECK (true);
CREATE POLICY live_api_all_rows ON live_moderation_actions TO live_api USING (true) WITH CHECK (true);
CREATE POLICY live_api_all_rows ON live_message_deletions TO live_api USING (true) WITH CHECK (true);
CREATE POLICY live_api_all_rows ON rate_limit_windows TO live_api USING (true) WITH CHECK (true);
