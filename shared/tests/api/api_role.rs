//! The role the functions connect as (`live_api`, migration 0006). Every other
//! test's handlers run as this role, so it can do what they do; here, that it
//! can do nothing more, and that it works on a bare Postgres too.

use serde_json::json;
use shared::handlers::post_message;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::helpers::{
    API_ROLE, AppOptions, LIVEKIT_API_SECRET, RestartableCluster, TestApp, as_api_role, connect,
    create_database, first_column, prepare_like_supabase, signed_webhook, webhook_event,
};

#[tokio::test]
async fn the_functions_role_is_no_superuser_and_owns_nothing() {
    let app = TestApp::spawn().await;
    let db = app.db().await;
    let role = db
        .query_one(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication FROM pg_roles WHERE rolname = $1",
            &[&API_ROLE],
        )
        .await
        .unwrap();
    for (i, attribute) in ["superuser", "createrole", "createdb", "bypassrls", "replication"]
        .iter()
        .enumerate()
    {
        assert!(!role.get::<_, bool>(i), "{API_ROLE} has {attribute}");
    }
    let owned: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid)
                  + (SELECT count(*) FROM pg_proc WHERE proowner = r.oid)
                  + (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid)
             FROM pg_roles r WHERE r.rolname = $1",
            &[&API_ROLE],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owned, 0);
    // The state under test really connects as that role.
    let client = app.state.db.get().await.unwrap();
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, API_ROLE);
}

#[tokio::test]
async fn the_functions_role_cannot_change_the_schema_or_destroy_data() {
    let app = TestApp::spawn().await;
    app.start_stream(Uuid::new_v4(), "kept").await;
    let db = connect(&app.api_database_url).await;
    for sql in [
        "CREATE TABLE public.intruder (id int)",
        "CREATE FUNCTION public.intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "ALTER TABLE live_streams ADD COLUMN intruder int",
        "ALTER TABLE live_streams DISABLE ROW LEVEL SECURITY",
        "DROP TABLE live_messages",
        "TRUNCATE live_streams CASCADE",
        "DELETE FROM live_streams",
        "DELETE FROM live_messages",
        "DELETE FROM live_room_restrictions",
        // A stream's owner and a message's author are fixed at their INSERT
        // (migration 0069).
        "UPDATE live_streams SET streamer_id = gen_random_uuid()",
        "UPDATE live_streams SET title = 'taken'",
        "UPDATE live_messages SET user_id = gen_random_uuid()",
        "UPDATE live_messages SET room_name = 'kept'",
        "SELECT * FROM schema_migrations",
        "SELECT * FROM live_message_deletions",
        "SELECT * FROM live_moderation_actions",
        "CREATE ROLE intruder SUPERUSER",
        "SET ROLE postgres",
    ] {
        let error = db
            .batch_execute(sql)
            .await
            .expect_err(&format!("{API_ROLE} ran `{sql}`"));
        assert_eq!(
            error.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "`{sql}`: {error}"
        );
    }
    assert!(app.stream_row("kept").await.is_some());
}

/// A database from before PostgreSQL 15 (kept across upgrades) grants CREATE
/// on `public` to PUBLIC, and so to every role: after the migrations the
/// functions' role cannot create there.
#[tokio::test]
async fn a_database_from_before_postgres_15_leaves_the_functions_role_no_create_on_public() {
    let url = create_database().await;
    prepare_like_supabase(&url).await;
    connect(&url)
        .await
        .batch_execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        .await
        .unwrap();
    shared::store::migrate::migrate_url(&url)
        .await
        .expect("migrations apply");
    let error = connect(&as_api_role(&url))
        .await
        .batch_execute("CREATE TABLE public.intruder (id int)")
        .await
        .expect_err("live_api created a table in public");
    assert_eq!(error.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{error}");
}

#[tokio::test]
async fn the_functions_sessions_carry_statement_and_lock_timeouts() {
    let app = TestApp::spawn().await;
    let client = app.state.db.get().await.unwrap();
    let show = |name: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    assert_eq!(show("statement_timeout").await, "5s");
    assert_eq!(show("lock_timeout").await, "2s");
    assert_eq!(show("idle_in_transaction_session_timeout").await, "10s");
}

/// A plain PostgreSQL without Supabase's roles or publication (a cluster of its
/// own, since roles belong to a whole cluster): the migrations apply and the
/// functions work as `live_api`.
#[tokio::test]
async fn on_a_bare_postgres_the_migrations_apply_and_the_functions_work() {
    let cluster = RestartableCluster::start().await;
    let admin = connect(&cluster.url()).await;
    let supabase_roles: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(supabase_roles, 0, "a bare cluster");
    shared::store::migrate::migrate_url(&cluster.url())
        .await
        .expect("migrations apply on a bare Postgres");
    let app = TestApp::spawn_with(AppOptions {
        database_url: Some(as_api_role(&cluster.url())),
        ..AppOptions::default()
    })
    .await;
    let (host, viewer) = (Uuid::new_v4(), Uuid::new_v4());
    app.start_stream(host, "bare").await;
    assert_eq!(
        app.request_token(&app.token_for(viewer), "bare").await.status,
        200
    );
    let chat = app
        .call(
            post_message,
            Some(&app.token_for(viewer)),
            &json!({"roomName": "bare", "text": "hi"}).to_string(),
        )
        .await;
    assert_eq!(chat.status, 201, "{}", chat.body);
    let joined = webhook_event(
        "EV_1",
        "participant_joined",
        "bare",
        Some((&viewer.to_string(), "PA_v", false)),
    );
    assert_eq!(
        app.deliver(signed_webhook(&joined, LIVEKIT_API_SECRET))
            .await
            .status,
        200
    );
    let count: i32 = admin
        .query_one("SELECT viewer_count FROM live_streams WHERE id = 'bare'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
}

/// Everything the functions' role may do in the schema, listed: a grant added
/// later fails here until it joins this list, with the handler that needs it
/// in the migration that grants it. Functions kept for binaries of an earlier
/// release (a deploy replaces the functions one by one, after the migrations)
/// stay executable until a later migration drops them.
#[tokio::test]
async fn the_functions_role_may_do_exactly_what_is_listed() {
    let app = TestApp::spawn().await;
    let granted = first_column(
        &app.db().await,
        "SELECT c.relname || ': ' || string_agg(p.privilege, ' ' ORDER BY p.privilege)
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) p(privilege)
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
               AND CASE WHEN p.privilege IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
                        THEN has_any_column_privilege($1, c.oid, p.privilege)
                        ELSE has_table_privilege($1, c.oid, p.privilege) END
             GROUP BY c.relname
             UNION ALL
             SELECT c.relname || ': UPDATE only ' || string_agg(a.attname, ' ' ORDER BY a.attname)
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
               AND NOT has_table_privilege($1, c.oid, 'UPDATE')
               AND has_column_privilege($1, c.oid, a.attnum, 'UPDATE')
             GROUP BY c.relname
             UNION ALL
             SELECT c.relname || ' (sequence): ' || string_agg(p.privilege, ' ' ORDER BY p.privilege)
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             CROSS JOIN unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) p(privilege)
             WHERE n.nspname = 'public' AND c.relkind = 'S' AND has_sequence_privilege($1, c.oid, p.privilege)
             GROUP BY c.relname
             UNION ALL
             SELECT 'execute ' || p.oid::regprocedure::text
             FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'public' AND has_function_privilege($1, p.oid, 'EXECUTE')
             ORDER BY 1",
        &[&API_ROLE],
    )
    .await;
    let expected: Vec<String> = FUNCTIONS_ROLE_MAY.iter().map(|line| (*line).to_owned()).collect();
    assert_eq!(granted, expected, "granted now:\n{}", granted.join("\n"));
}

/// What `live_api` may do (see the test above), as `has_*_privilege` reads
/// it: DELETE only where rows end by design (sessions, presence, claims,
/// rate-limit keys, unique-viewer marks and webhook ids, which the
/// reconciler prunes or a start releases; the stage rows and count shards
/// of a long-ended stream, which it folds), UPDATE of streams and messages
/// only on the columns the functions write, and no TRUNCATE, REFERENCES or
/// TRIGGER anywhere.
const FUNCTIONS_ROLE_MAY: &[&str] = &[
    "execute live_chat_batch_done(text,bigint,timestamp with time zone)",
    "execute live_chat_batch_failed(text,timestamp with time zone)",
    "execute live_chat_batch_sent(text,bigint)", // superseded; kept for an earlier release's binaries
    "execute live_chat_say(text,uuid,text,text,double precision,bigint)", // superseded; kept for an earlier release's binaries
    "execute live_chat_say(text,uuid,text,text,double precision,bigint,uuid)",
    "execute live_chat_stored(uuid,text,uuid,text)",
    "execute live_chat_take_batch_lease(text,interval)", // superseded; kept for an earlier release's binaries
    "execute live_chat_take_batch_lease(text,interval,interval)",
    "execute live_chat_take_lease(text,interval)", // superseded; kept for an earlier release's binaries
    "execute live_chat_unsent(text,bigint,bigint)",
    "execute live_close_counts(text)",
    "execute live_count_add(text,integer,integer,integer,double precision,double precision)",
    "execute live_end_lapsed_away_turns(text,text[],double precision,double precision,bigint)", // the reconciler and a full stage (0073)
    "execute live_end_stream(text,uuid)",
    "execute live_end_stream_its_host_left(text,interval)", // the reconciler (0065)
    "execute live_finish_stream(text,interval)",
    "execute live_flush_reactions(interval)",
    "execute live_flush_viewer_counts()",
    "execute live_fold_ended_streams(text[])", // the reconciler (0067)
    "execute live_identity_user(text)",
    "execute live_moderate(text,uuid,boolean,boolean,uuid,text)",
    "execute live_note_peak(text,integer)",
    "execute live_participant_event(text,text,text,text,text,text,uuid,boolean,text)", // superseded; kept for an earlier release's binaries
    "execute live_participant_event(text,text,text,text,text,text,uuid,boolean,text,double precision,timestamp with time zone)",
    "execute live_presence_change(text,text,text,boolean,text,text)",
    "execute live_react(text,uuid,text,text,double precision,bigint,interval)",
    "execute live_react_under_standing(text,uuid,text,text,double precision,bigint,interval)",
    "execute live_reactions_take(text,interval)",
    "execute live_reactions_unsent(text,jsonb,jsonb)",
    "execute live_room_standing_lock(text,boolean)",
    "execute live_session_change(text,text,text,boolean,text,text)",
    "execute live_settle_chat(text)",
    "execute live_stage_change(text,uuid,uuid,text,integer)", // superseded; kept for an earlier release's binaries
    "execute live_stage_change(text,uuid,uuid,text,integer,double precision)",
    "execute live_stage_change_under_standing(text,uuid,uuid,text,integer,double precision)",
    "execute live_stage_change_within_limit(text,uuid,uuid,text,integer,text,double precision,bigint)", // superseded; kept for an earlier release's binaries
    "execute live_stage_change_within_limit(text,uuid,uuid,text,integer,text,double precision,bigint,double precision)",
    "execute live_start_check(text,uuid,text,integer,text,double precision,bigint)",
    "execute live_start_stream(text,uuid,text,integer,boolean,text)",
    "execute live_streamer_has_profile(uuid)",
    "execute live_sync_sessions(text,timestamp with time zone,text[],text[],boolean[],text[])", // superseded; kept for an earlier release's binaries
    "execute live_sync_sessions(text,timestamp with time zone,text[],text[],boolean[],text[],timestamp with time zone[],double precision)",
    "execute live_token_access(text,uuid,text,double precision,bigint,bigint,uuid,boolean,boolean,boolean,boolean,boolean,boolean)", // superseded; kept for an earlier release's binaries
    "execute live_token_access(text,uuid,text,double precision,bigint,double precision,bigint,uuid,boolean,boolean,boolean,boolean,boolean,boolean)",
    "execute live_viewer_count(text)",
    "execute live_write_viewer_count(text)",
    "execute rate_limit_hit(text,double precision,bigint)",
    "live_chat_broadcasts: INSERT SELECT UPDATE",
    "live_message_deletions: INSERT",
    "live_message_tombstones: INSERT",
    "live_messages: INSERT SELECT UPDATE",
    "live_messages: UPDATE only deleted_at deleted_by text",
    "live_messages_seq (sequence): USAGE",
    "live_moderation_actions: INSERT",
    "live_participant_sessions: DELETE INSERT SELECT UPDATE",
    "live_presence: DELETE INSERT SELECT UPDATE",
    "live_prune_progress: INSERT SELECT UPDATE",
    "live_reaction_broadcasts: INSERT SELECT UPDATE",
    "live_reaction_counts: DELETE INSERT SELECT UPDATE",
    "live_room_claims: DELETE INSERT SELECT UPDATE",
    "live_room_restrictions: INSERT SELECT UPDATE",
    "live_stage: DELETE INSERT SELECT UPDATE",
    "live_stream_stats: INSERT SELECT UPDATE",
    "live_streams: INSERT SELECT UPDATE",
    "live_streams: UPDATE only ended_at is_live room_closed_at room_missing_since room_sid viewer_count viewer_count_written_at",
    "live_viewer_counts: DELETE INSERT SELECT UPDATE",
    "live_viewers_seen: DELETE INSERT SELECT",
    "live_webhook_events: DELETE INSERT SELECT",
    "rate_limits: DELETE INSERT SELECT UPDATE",
];
