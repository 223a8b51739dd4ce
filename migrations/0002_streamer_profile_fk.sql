-- The design links live_streams.streamer_id to profiles. A Supabase project
-- usually has public.profiles (id = auth.users.id); a bare Postgres has not.
-- So the foreign key is added only where public.profiles exists, and the same
-- migrations apply on both.
--
-- ON DELETE CASCADE: when an account (and so its profile) is deleted, its
-- streams and their chat go with it. RESTRICT would make account deletion fail
-- for anyone who ever streamed. The API itself never deletes a stream.
--
-- A profiles table created after this migration ran does not get the key;
-- add it by hand with the same statement.
DO $$
BEGIN
    IF to_regclass('public.profiles') IS NOT NULL THEN
        ALTER TABLE live_streams
            ADD CONSTRAINT live_streams_streamer_id_fkey
            FOREIGN KEY (streamer_id) REFERENCES public.profiles (id) ON DELETE CASCADE;
    END IF;
END
$$;
