-- Deleting an account removed the streams it hosted and their chat (0002),
-- but what it wrote in other people's streams stayed: every signed-in user
-- (an anonymous sign-in too) could still read it through the API's policy
-- on live_messages, text and author, for good. The messages of a deleted
-- profile are now deleted with it, as if their author had deleted each one:
-- the row is blanked and hidden from API users, and a tombstone tells
-- Realtime's subscribers to drop it from their screens. Unlike a deletion
-- through the API, the text is not kept in live_message_deletions: the
-- account asked to be erased, not moderated. (What was deleted before, and
-- kept there for moderation reviews, stays under the operator's retention.)
--
-- Where there is no public.profiles (a bare Postgres) there is nothing to
-- hang this on; a profiles table created later needs the trigger added by
-- hand with the statement below, as it needs 0002's key. The trigger fires
-- in whatever session deletes the profile (Supabase's supabase_auth_admin,
-- cascading from auth.users, search path `auth`, no privilege on our
-- tables), so it runs as its owner with a fixed search path, as 0046's does.
-- One statement per deleting statement. No index on the author: building
-- one would hold back every chat post while it reads the whole table, at
-- deploy time (0065's reason too); a deletion reads the chat table once,
-- about a second per million messages, in the rare deleting statement.

CREATE FUNCTION live_erase_chat_of_deleted_profiles() RETURNS TRIGGER
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    WITH erased AS (
        UPDATE live_messages m SET text = '', deleted_at = now(), deleted_by = m.user_id
        FROM (SELECT DISTINCT id FROM gone_profiles) g
        WHERE m.user_id = g.id AND m.deleted_at IS NULL
        RETURNING m.id, m.room_name
    )
    INSERT INTO live_message_tombstones (message_id, room_name, deleted_at)
    SELECT id, room_name, now() FROM erased
    ON CONFLICT (message_id) DO NOTHING;
    RETURN NULL;
END
$$;

CALL live_revoke_from_api_roles(ARRAY[
    'live_erase_chat_of_deleted_profiles()'
]::REGPROCEDURE[]);

DO $$
BEGIN
    IF to_regclass('public.profiles') IS NOT NULL THEN
        IF NOT has_table_privilege('public.profiles', 'TRIGGER') THEN
            RAISE EXCEPTION 'the migrating role (%) cannot add a trigger to public.profiles', current_user
                USING HINT = 'Run the migrations as the owner of public.profiles (on Supabase, postgres).';
        END IF;
        CREATE TRIGGER live_erase_chat_of_deleted_profiles
        AFTER DELETE ON public.profiles
        REFERENCING OLD TABLE AS gone_profiles
        FOR EACH STATEMENT
        EXECUTE FUNCTION live_erase_chat_of_deleted_profiles();
    END IF;
END
$$;
