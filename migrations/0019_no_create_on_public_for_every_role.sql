-- The functions' role must not change the schema (0006). Before PostgreSQL 15
-- every role could create objects in `public` through PUBLIC's CREATE
-- privilege, and a database created then keeps that grant across upgrades (a
-- Supabase project or RDS instance from the PostgreSQL 14 era, say), so
-- live_api would have it too. This is PostgreSQL 15's own default (the fix
-- for CVE-2018-1058); a role that needs to create in `public` gets CREATE by
-- name. Where the grant is already gone it changes nothing.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- A migrating role that does not own `public` only gets a warning from the
-- REVOKE above: stop here rather than leave the functions' role able to
-- create objects the app's API would then serve.
DO $$
BEGIN
    IF has_schema_privilege('live_api', 'public', 'CREATE') THEN
        RAISE EXCEPTION 'live_api can create objects in schema public'
            USING HINT = 'Run REVOKE CREATE ON SCHEMA public FROM PUBLIC (and from live_api) as the schema''s owner, then migrate again.';
    END IF;
END
$$;
