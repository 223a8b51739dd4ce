-- Deleting the account of anyone who ever streamed failed on Supabase.
-- Supabase deletes an account as supabase_auth_admin (the dashboard,
-- auth.admin.deleteUser), whose search path is `auth` and who holds no
-- privilege on our tables. The key from auth.users through profiles to
-- live_streams (0002) cascades as each table's owner, but the row trigger
-- 0018 put on live_streams fires at the end of the deleting statement, as
-- whoever ran it: it could not see live_participant_sessions on that search
-- path, nor delete from it with that role's privileges, so the whole delete
-- failed and the account stayed.
--
-- The trigger now runs as its owner (the migrating role, which owns the
-- tables it clears) with a fixed search path, as foreign keys' own cascades
-- do. It still only clears the viewer rows of the stream being deleted, or
-- refuses a change of a stream's id that would strand them.

ALTER FUNCTION live_stream_viewer_rows_follow()
    SECURITY DEFINER
    SET search_path = pg_catalog, public, pg_temp;
