-- The functions' role reaches our tables and functions through schema
-- `public`, which takes USAGE on the schema. On a bare PostgreSQL, PUBLIC
-- has it, so live_api had it too without a grant of its own; a Supabase
-- project takes it from PUBLIC and grants it by name to `anon`,
-- `authenticated` and `service_role` only (its schema dumps read
-- `REVOKE USAGE ON SCHEMA "public" FROM PUBLIC`). There live_api would find
-- nothing: `public` drops out of its search path, and every call of the
-- functions fails as "does not exist". USAGE lets a role look objects up,
-- nothing more: what it may do with each is still its grants and policies.
GRANT USAGE ON SCHEMA public TO live_api;

-- A migrating role that does not own `public` (nor holds USAGE with GRANT
-- OPTION) only gets a warning from the GRANT above: stop here rather than
-- deploy functions that cannot reach their schema.
DO $$
BEGIN
    IF NOT has_schema_privilege('live_api', 'public', 'USAGE') THEN
        RAISE EXCEPTION 'live_api cannot use schema public'
            USING HINT = 'Run GRANT USAGE ON SCHEMA public TO live_api as the schema''s owner, then migrate again.';
    END IF;
END
$$;
