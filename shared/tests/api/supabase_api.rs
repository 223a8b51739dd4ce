//! What Supabase's public API (PostgREST, Realtime) lets the app's users do to
//! our tables and functions, on a database prepared like Supabase's: each
//! attack runs as `anon` (anyone holding the anon key that ships in the app)
//! and as `authenticated` (any signed-in user), and fails; the reads the app's
//! Realtime subscriptions need still work.

use std::collections::BTreeSet;

use serde_json::json;
use shared::handlers::{delete_message, moderate, post_message};
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::helpers::{
    AppOptions, LIVEKIT_API_SECRET, TestApp, as_api_role, connect, create_database, create_role_once,
    first_column, prepare_like_supabase, prepare_like_supabase_with_publication, request_with,
    signed_webhook, webhook_event,
};

const ROOM: &str = "exposed";
const API_USERS: [&str; 2] = ["anon", "authenticated"];

/// A live stream with a message, a deleted message, a banned viewer, a
/// present participant and rate-limit rows: something of every kind to attack.
struct Fixture {
    app: TestApp,
    host: Uuid,
    viewer: Uuid,
    visible_message: Uuid,
    deleted_message: Uuid,
}

async fn fixture() -> Fixture {
    fixture_in(TestApp::spawn().await, Uuid::new_v4(), Uuid::new_v4()).await
}

async fn fixture_in(app: TestApp, host: Uuid, viewer: Uuid) -> Fixture {
    app.start_stream(host, ROOM).await;
    let visible = say(&app, viewer, "hello everyone").await;
    let deleted = say(&app, viewer, "my phone number is 555-0100").await;
    assert_eq!((visible.status, deleted.status), (201, 201));
    let deleted_message: Uuid = deleted.body["message"]["id"].as_str().unwrap().parse().unwrap();
    let request = request_with(
        lambda_http::http::Method::DELETE,
        Some(&app.token_for(viewer)),
        &[],
        Some(&deleted_message.to_string()),
    );
    assert_eq!(app.send(delete_message, request).await.status, 200);
    let joined = webhook_event(
        "EV_join",
        "participant_joined",
        ROOM,
        Some((&viewer.to_string(), "PA_viewer", false)),
    );
    assert_eq!(
        app.deliver(signed_webhook(&joined, LIVEKIT_API_SECRET))
            .await
            .status,
        200
    );
    let ban = json!({"roomName": ROOM, "userId": viewer, "action": "ban"}).to_string();
    assert_eq!(
        app.call(moderate, Some(&app.token_for(host)), &ban).await.status,
        200
    );
    Fixture {
        visible_message: visible.body["message"]["id"].as_str().unwrap().parse().unwrap(),
        deleted_message,
        app,
        host,
        viewer,
    }
}

async fn say(app: &TestApp, user: Uuid, text: &str) -> crate::helpers::TestResponse {
    let body = json!({"roomName": ROOM, "text": text}).to_string();
    app.call(post_message, Some(&app.token_for(user)), &body).await
}

/// Runs `sql` as `role` on a connection of its own, as PostgREST does for a
/// request carrying that role's JWT.
async fn run_as(
    app: &TestApp,
    role: &str,
    sql: &str,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let db = connect(&app.database_url).await;
    db.batch_execute(&format!("SET ROLE {role}")).await.unwrap();
    db.query(sql, &[]).await
}

fn assert_refused(result: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>, role: &str, sql: &str) {
    match result {
        Ok(rows) => panic!("{role} ran `{sql}`: {} rows", rows.len()),
        Err(error) => assert_eq!(
            error.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{role} `{sql}`: {error}"
        ),
    }
}

#[tokio::test]
async fn api_users_cannot_take_over_end_or_delete_a_stream() {
    let f = fixture().await;
    let attacker = Uuid::new_v4();
    for role in API_USERS {
        for sql in [
            format!("UPDATE live_streams SET streamer_id = '{attacker}' WHERE id = '{ROOM}'"),
            format!("UPDATE live_streams SET is_live = false, ended_at = now() WHERE id = '{ROOM}'"),
            format!("UPDATE live_streams SET viewer_count = 100000 WHERE id = '{ROOM}'"),
            "DELETE FROM live_streams".to_owned(),
            format!(
                "INSERT INTO live_streams (id, streamer_id, title) VALUES ('fake', '{attacker}', 'Free coins')"
            ),
        ] {
            assert_refused(run_as(&f.app, role, &sql).await, role, &sql);
        }
    }
    let row = f.app.stream_row(ROOM).await.expect("the stream is still there");
    assert_eq!(row.get::<_, Uuid>("streamer_id"), f.host);
    assert!(row.get::<_, bool>("is_live"));
    let token = f.app.request_token(&f.app.token_for(attacker), ROOM).await;
    assert_eq!(token.status, 200);
    let grants = crate::helpers::verify_livekit_token(token.body["token"].as_str().unwrap()).video;
    assert_eq!(grants.can_publish, Some(false), "the attacker is still a viewer");
}

#[tokio::test]
async fn api_users_cannot_forge_or_remove_chat_or_lift_a_ban() {
    let f = fixture().await;
    for role in API_USERS {
        for sql in [
            format!(
                "INSERT INTO live_messages (room_name, user_id, text) VALUES ('{ROOM}', '{}', 'forged by someone else')",
                f.host
            ),
            format!(
                "UPDATE live_messages SET text = 'edited' WHERE id = '{}'",
                f.visible_message
            ),
            "DELETE FROM live_messages".to_owned(),
            "DELETE FROM live_room_restrictions".to_owned(),
            "UPDATE live_room_restrictions SET banned = false".to_owned(),
            format!(
                "INSERT INTO live_moderation_actions (room_name, moderator_id, target_id, action) VALUES ('{ROOM}', '{}', '{}', 'unban')",
                f.host, f.viewer
            ),
        ] {
            assert_refused(run_as(&f.app, role, &sql).await, role, &sql);
        }
    }
    let banned = f.app.request_token(&f.app.token_for(f.viewer), ROOM).await;
    banned.assert_error(403, "banned");
}

#[tokio::test]
async fn api_users_cannot_read_who_watched_who_was_moderated_or_any_bookkeeping() {
    let f = fixture().await;
    for role in API_USERS {
        for table in [
            "live_participant_sessions",
            "live_room_restrictions",
            "live_moderation_actions",
            "live_webhook_events",
            "rate_limits",
            "live_message_deletions",
            "schema_migrations",
        ] {
            let sql = format!("SELECT * FROM {table}");
            assert_refused(run_as(&f.app, role, &sql).await, role, &sql);
        }
    }
}

#[tokio::test]
async fn api_users_cannot_call_our_functions() {
    let f = fixture().await;
    for role in API_USERS {
        for sql in [
            // Locking a victim out of chat, or growing a row without bound.
            format!("SELECT rate_limit_hit('chat:{ROOM}:{}', 86400, 1)", f.host),
            format!(
                "CALL live_token_access('{ROOM}', '{}', 'token:x', 60, 1000000)",
                f.viewer
            ),
        ] {
            assert_refused(run_as(&f.app, role, &sql).await, role, &sql);
        }
    }
}

#[tokio::test]
async fn signed_in_users_read_streams_and_visible_chat_and_nothing_else() {
    let f = fixture().await;
    let streams = run_as(
        &f.app,
        "authenticated",
        "SELECT id, viewer_count FROM live_streams",
    )
    .await
    .expect("the app reads the streams (Realtime)");
    let ids: Vec<String> = streams.iter().map(|row| row.get(0)).collect();
    assert_eq!(ids, vec![ROOM.to_owned()]);
    assert_eq!(streams[0].get::<_, i32>(1), 1, "the viewer who joined");

    let messages = run_as(&f.app, "authenticated", "SELECT id, text FROM live_messages")
        .await
        .expect("the app reads the chat (Realtime)");
    let visible: Vec<(Uuid, String)> = messages.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(visible, vec![(f.visible_message, "hello everyone".to_owned())]);

    for sql in ["SELECT * FROM live_streams", "SELECT * FROM live_messages"] {
        assert_refused(run_as(&f.app, "anon", sql).await, "anon", sql);
    }
}

#[tokio::test]
async fn a_deleted_message_keeps_no_text_where_a_subscriber_could_read_it() {
    let f = fixture().await;
    let db = f.app.db().await;
    // What Realtime would broadcast for the deleting UPDATE: the new row.
    let row = db
        .query_one(
            "SELECT text, deleted_at IS NOT NULL AS deleted, deleted_by FROM live_messages WHERE id = $1",
            &[&f.deleted_message],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>("text"), "");
    assert!(row.get::<_, bool>("deleted"));
    assert_eq!(row.get::<_, Option<Uuid>>("deleted_by"), Some(f.viewer));
    // Even a subscriber allowed to read the row would not see it: the policy
    // hides deleted messages.
    let sql = format!(
        "SELECT text FROM live_messages WHERE id = '{}'",
        f.deleted_message
    );
    assert!(run_as(&f.app, "authenticated", &sql).await.unwrap().is_empty());
    // The text is kept for moderation reviews, where only the owner reads it.
    let kept = db
        .query_one(
            "SELECT original_text, author_id, deleted_by, room_name FROM live_message_deletions WHERE message_id = $1",
            &[&f.deleted_message],
        )
        .await
        .unwrap();
    assert_eq!(kept.get::<_, String>(0), "my phone number is 555-0100");
    assert_eq!(
        (kept.get::<_, Uuid>(1), kept.get::<_, Uuid>(2)),
        (f.viewer, f.viewer)
    );
    assert_eq!(kept.get::<_, String>(3), ROOM);
}

/// A screen following a room's chat through Realtime learns of a deletion
/// from its tombstone (migration 0048): Realtime checks each change against
/// the subscriber's policies on the new row, and the deleted row itself is
/// hidden from them. The tombstone says which message went, in which room,
/// and when; nothing of its text or author. Signed-in users read tombstones,
/// nobody writes them through the API, and Realtime publishes them.
#[tokio::test]
async fn subscribers_learn_of_a_deletion_from_its_tombstone_and_nothing_more() {
    let f = fixture().await;
    let rows = run_as(
        &f.app,
        "authenticated",
        "SELECT message_id, room_name FROM live_message_tombstones",
    )
    .await
    .expect("signed-in users read tombstones");
    let tombstones: Vec<(Uuid, String)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(tombstones, vec![(f.deleted_message, ROOM.to_owned())]);
    let admin = f.app.db().await;
    let columns = first_column(
        &admin,
        "SELECT column_name::text FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name = 'live_message_tombstones' ORDER BY ordinal_position",
        &[],
    )
    .await;
    assert_eq!(columns, ["message_id", "room_name", "deleted_at"]);

    let forged = format!(
        "INSERT INTO live_message_tombstones (message_id, room_name, deleted_at) VALUES ('{}', '{ROOM}', now())",
        f.visible_message
    );
    for role in API_USERS {
        for sql in [
            forged.as_str(),
            "DELETE FROM live_message_tombstones",
            "UPDATE live_message_tombstones SET deleted_at = now()",
        ] {
            assert_refused(run_as(&f.app, role, sql).await, role, sql);
        }
    }
    let sql = "SELECT * FROM live_message_tombstones";
    assert_refused(run_as(&f.app, "anon", sql).await, "anon", sql);

    let published = first_column(
        &admin,
        "SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'supabase_realtime' ORDER BY 1",
        &[],
    )
    .await;
    assert_eq!(
        published,
        ["live_message_tombstones", "live_messages", "live_streams"]
    );
}

/// The rules above hold for every table, function and sequence in the schema,
/// so a later migration that adds one and forgets its RLS or its REVOKE fails here.
#[tokio::test]
async fn every_table_function_and_sequence_of_the_schema_is_closed_to_api_users() {
    let f = fixture().await;
    let db = f.app.db().await;
    let without_rls = first_column(
        &db,
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity ORDER BY 1",
        &[],
    )
    .await;
    assert!(
        without_rls.is_empty(),
        "tables without row-level security: {without_rls:?}"
    );

    let functions: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(functions >= 2, "the schema's functions are listed: {functions}");
    // A function that runs as its owner must not look up names where a
    // caller could put objects of their own first.
    let definers_without_search_path = first_column(
        &db,
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'public' AND p.prosecdef
               AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search\\_path=%pg\\_temp')
             ORDER BY 1",
        &[],
    )
    .await;
    assert!(
        definers_without_search_path.is_empty(),
        "SECURITY DEFINER without a fixed search_path ending in pg_temp: {definers_without_search_path:?}"
    );
    for role in API_USERS {
        let executable = first_column(
            &db,
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                 WHERE n.nspname = 'public' AND has_function_privilege($1, p.oid, 'EXECUTE') ORDER BY 1",
            &[&role],
        )
        .await;
        assert!(executable.is_empty(), "{role} may execute {executable:?}");

        let table_privileges = first_column(&db,
                "SELECT c.relname || ': ' || p.privilege
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                      unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p (privilege)
                 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                   AND CASE WHEN p.privilege IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
                            THEN has_any_column_privilege($1, c.oid, p.privilege)
                            ELSE has_table_privilege($1, c.oid, p.privilege) END
                 ORDER BY 1",
&[&role]).await;
        let table_privileges: BTreeSet<String> = table_privileges.into_iter().collect();
        let expected: BTreeSet<String> = match role {
            "authenticated" => [
                "live_message_tombstones: SELECT",
                "live_messages: SELECT",
                "live_streams: SELECT",
            ]
            .map(String::from)
            .into(),
            _ => BTreeSet::new(),
        };
        assert_eq!(table_privileges, expected, "{role}");

        let sequences = first_column(&db,
                "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'public' AND c.relkind = 'S'
                   AND (has_sequence_privilege($1, c.oid, 'USAGE') OR has_sequence_privilege($1, c.oid, 'SELECT')
                        OR has_sequence_privilege($1, c.oid, 'UPDATE'))",
&[&role]).await;
        assert!(sequences.is_empty(), "{role} may use {sequences:?}");
    }

    let policies = first_column(
        &db,
        "SELECT tablename || ' ' || cmd || ' ' || array_to_string(roles, ',') FROM pg_policies
             WHERE schemaname = 'public' AND roles && ARRAY['anon', 'authenticated', 'public']::name[]
             ORDER BY 1",
        &[],
    )
    .await;
    assert_eq!(
        policies,
        vec![
            "live_message_tombstones SELECT authenticated",
            "live_messages SELECT authenticated",
            "live_streams SELECT authenticated"
        ]
    );
}

/// Supabase's `auth` schema as far as deleting an account goes: `auth.users`
/// owned by `supabase_auth_admin` (created first, [`create_role_once`]), and
/// the app's `public.profiles` keyed to it with `ON DELETE CASCADE`, as
/// Supabase's guides make it.
const SUPABASE_AUTH: &str = "
    CREATE SCHEMA auth AUTHORIZATION supabase_auth_admin;
    CREATE TABLE auth.users (id UUID PRIMARY KEY);
    ALTER TABLE auth.users OWNER TO supabase_auth_admin;
    CREATE TABLE public.profiles (id UUID PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE, username TEXT);";

/// How many rows each of our tables holds for `room` (a table with a
/// `room_name` column, and `live_streams` by id), the tables with none left out.
/// Supabase's dashboard can make `supabase_realtime` publish every table,
/// which refuses `ADD TABLE`: the migrations still apply there, and the
/// tables the app follows through Realtime are published.
#[tokio::test]
async fn the_migrations_apply_where_realtime_publishes_every_table() {
    let url = create_database().await;
    prepare_like_supabase_with_publication(&url, "CREATE PUBLICATION supabase_realtime FOR ALL TABLES").await;
    shared::store::migrate::migrate_url(&url)
        .await
        .expect("the migrations apply");
    let published = first_column(
        &connect(&url).await,
        "SELECT tablename::text FROM pg_publication_tables
         WHERE pubname = 'supabase_realtime'
           AND tablename IN ('live_streams', 'live_messages', 'live_message_tombstones')
         ORDER BY 1",
        &[],
    )
    .await;
    assert_eq!(
        published,
        ["live_message_tombstones", "live_messages", "live_streams"]
    );
}

/// A database prepared like Supabase's, with its `auth` schema and an
/// account and profile for each of `users`, migrated; its URL, an owner's
/// connection, and the functions on it as `live_api`.
async fn with_supabase_accounts(users: &[Uuid]) -> (String, tokio_postgres::Client, TestApp) {
    let url = create_database().await;
    prepare_like_supabase(&url).await;
    let admin = connect(&url).await;
    admin
        .batch_execute(&(create_role_once("supabase_auth_admin", "") + SUPABASE_AUTH))
        .await
        .unwrap();
    shared::store::migrate::migrate_url(&url).await.unwrap();
    for user in users {
        admin
            .execute("INSERT INTO auth.users (id) VALUES ($1)", &[&user])
            .await
            .unwrap();
        admin
            .execute("INSERT INTO public.profiles (id) VALUES ($1)", &[&user])
            .await
            .unwrap();
    }
    let app = TestApp::spawn_with(AppOptions {
        database_url: Some(as_api_role(&url)),
        ..AppOptions::default()
    })
    .await;
    (url, admin, app)
}

async fn rows_of_room(admin: &tokio_postgres::Client, room: &str) -> Vec<(String, i64)> {
    let tables = first_column(
        admin,
        "SELECT table_name::text FROM information_schema.columns
         WHERE table_schema = 'public' AND column_name = 'room_name'
           AND table_name IN (SELECT tablename FROM pg_tables WHERE schemaname = 'public')
         ORDER BY 1",
        &[],
    )
    .await;
    let mut rows = Vec::new();
    for (table, column) in tables
        .iter()
        .map(|t| (t.as_str(), "room_name"))
        .chain([("live_streams", "id")])
    {
        let count: i64 = admin
            .query_one(
                &format!("SELECT count(*) FROM public.{table} WHERE {column} = $1"),
                &[&room],
            )
            .await
            .unwrap()
            .get(0);
        if count > 0 {
            rows.push((table.to_owned(), count));
        }
    }
    rows
}

/// Supabase deletes an account as `supabase_auth_admin` (the dashboard,
/// `auth.admin.deleteUser`), with `auth` as its search path and no privilege
/// on our tables. The key from `auth.users` through `profiles` to the streams
/// cascades as each table's owner; a trigger on the streams fires as the
/// deleting role (migration 0046). The account of someone who streamed goes,
/// and every row of their stream with it.
#[tokio::test]
async fn supabase_deletes_the_account_of_someone_who_streamed_and_every_row_of_their_stream() {
    let (host, viewer) = (Uuid::new_v4(), Uuid::new_v4());
    let (url, admin, app) = with_supabase_accounts(&[host, viewer]).await;
    let fixture = fixture_in(app, host, viewer).await;
    let before = rows_of_room(&admin, ROOM).await;
    for table in [
        "live_streams",
        "live_messages",
        "live_participant_sessions",
        "live_presence",
        "live_viewers_seen",
        "live_room_restrictions",
    ] {
        assert!(
            before.iter().any(|(t, _)| t == table),
            "the stream has rows in {table} before: {before:?}"
        );
    }

    let auth_admin = connect(&url).await;
    auth_admin
        .batch_execute("SET ROLE supabase_auth_admin; SET search_path = auth")
        .await
        .unwrap();
    auth_admin
        .execute("DELETE FROM users WHERE id = $1", &[&fixture.host])
        .await
        .expect("Supabase deletes the account");

    // Its room may still be open in LiveKit: its name stays claimed until the
    // reconciler has closed it (migration 0062), then nothing is left.
    assert_eq!(
        rows_of_room(&admin, ROOM).await,
        [("live_room_claims".to_owned(), 1)],
        "rows of the deleted account's stream"
    );
    let report =
        shared::scheduled::reconcile::reconcile(&fixture.app.state, std::time::Duration::from_secs(120))
            .await
            .unwrap();
    assert_eq!(report.rooms_closed, 1, "{report:?}");
    assert!(!fixture.app.has_room(ROOM).await);
    assert_eq!(
        rows_of_room(&admin, ROOM).await,
        Vec::<(String, i64)>::new(),
        "rows of the deleted account's stream, once its room is closed"
    );
    let viewer_account: i64 = admin
        .query_one(
            "SELECT count(*) FROM auth.users WHERE id = $1",
            &[&fixture.viewer],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(viewer_account, 1, "only the streamer's account went");
}

/// A deleted account takes what it wrote in other people's streams along
/// (migration 0070): signed-in users no longer read it through the API, the
/// row keeps no text, a tombstone tells Realtime's subscribers, and nothing
/// keeps a copy of it. The streamer's and everyone else's chat stays.
#[tokio::test]
async fn a_deleted_accounts_chat_in_other_streams_is_erased() {
    let (host, viewer, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (url, admin, app) = with_supabase_accounts(&[host, viewer, other]).await;
    let fixture = fixture_in(app, host, viewer).await;
    for (user, text) in [(host, "welcome"), (other, "hi from someone else")] {
        assert_eq!(say(&fixture.app, user, text).await.status, 201);
    }
    // A signed-in user's reads, as PostgREST and Realtime make them.
    let user = connect(&url).await;
    user.batch_execute("SET ROLE authenticated").await.unwrap();
    let readable = "SELECT text FROM live_messages ORDER BY created_at";
    let before = first_column(&user, readable, &[]).await;
    assert_eq!(before, ["hello everyone", "welcome", "hi from someone else"]);

    let auth_admin = connect(&url).await;
    auth_admin
        .batch_execute("SET ROLE supabase_auth_admin; SET search_path = auth")
        .await
        .unwrap();
    auth_admin
        .execute("DELETE FROM users WHERE id = $1", &[&viewer])
        .await
        .expect("Supabase deletes the account");

    let after = first_column(&user, readable, &[]).await;
    assert_eq!(after, ["welcome", "hi from someone else"]);
    let erased = admin
        .query_one(
            "SELECT text, deleted_at IS NOT NULL, deleted_by FROM live_messages WHERE id = $1",
            &[&fixture.visible_message],
        )
        .await
        .unwrap();
    assert_eq!(erased.get::<_, &str>(0), "");
    assert!(erased.get::<_, bool>(1));
    assert_eq!(erased.get::<_, Option<Uuid>>(2), Some(viewer));
    let tombstones: i64 = user
        .query_one(
            "SELECT count(*) FROM live_message_tombstones WHERE message_id = $1 AND room_name = $2",
            &[&fixture.visible_message, &ROOM],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tombstones, 1);
    let copies: i64 = admin
        .query_one(
            "SELECT count(*) FROM live_message_deletions WHERE message_id = $1",
            &[&fixture.visible_message],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(copies, 0, "the erased text is kept nowhere");
}
