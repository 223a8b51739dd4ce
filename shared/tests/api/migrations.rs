use crate::helpers::{connect, create_database, first_column};

async fn applied_versions(client: &tokio_postgres::Client) -> Vec<i32> {
    client
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn migrations_apply_once_and_are_idempotent() {
    let url = create_database().await;
    let first = shared::store::migrate::migrate_url(&url).await.unwrap();
    assert_eq!(first.len(), shared::store::migrate::MIGRATIONS.len());
    let second = shared::store::migrate::migrate_url(&url).await.unwrap();
    assert!(second.is_empty(), "{second:?}");
    let client = connect(&url).await;
    let every_version: Vec<i32> = shared::store::migrate::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(applied_versions(&client).await, every_version);
}

/// The database keeps the SQL a migration ran, so a migration whose file
/// changed after it was applied is refused, by name: the change belongs in a
/// new migration. A database migrated before checksums were kept gets them
/// on its next run, from the files of that run.
#[tokio::test]
async fn a_migration_changed_after_it_was_applied_is_refused() {
    use shared::store::migrate::{MIGRATIONS, checksum, migrate_url};
    let url = create_database().await;
    migrate_url(&url).await.unwrap();
    let client = connect(&url).await;
    let recorded = || async {
        client
            .query("SELECT checksum FROM schema_migrations ORDER BY version", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<_, Option<String>>(0))
            .collect::<Vec<_>>()
    };
    let ours: Vec<Option<String>> = MIGRATIONS.iter().map(|m| Some(checksum(m.sql))).collect();
    assert_eq!(recorded().await, ours);

    client
        .batch_execute("UPDATE schema_migrations SET checksum = NULL")
        .await
        .unwrap();
    assert_eq!(migrate_url(&url).await.unwrap(), Vec::<&str>::new());
    assert_eq!(recorded().await, ours, "filled in by the next run");

    client
        .execute(
            "UPDATE schema_migrations SET checksum = $1 WHERE version = 5",
            &[&checksum("-- the SQL an earlier checkout ran")],
        )
        .await
        .unwrap();
    let refused = migrate_url(&url)
        .await
        .expect_err("a changed migration is refused");
    assert!(
        refused.to_string().contains(MIGRATIONS[4].name),
        "names the migration: {refused}"
    );
}

#[tokio::test]
async fn concurrent_migration_runs_do_not_collide() {
    let url = create_database().await;
    let runs = futures::future::join_all((0..4).map(|_| shared::store::migrate::migrate_url(&url))).await;
    let applied: usize = runs.into_iter().map(|r| r.unwrap().len()).sum();
    assert_eq!(
        applied,
        shared::store::migrate::MIGRATIONS.len(),
        "each migration applied exactly once"
    );
}

#[tokio::test]
async fn the_schema_keeps_stream_state_consistent() {
    let url = create_database().await;
    shared::store::migrate::migrate_url(&url).await.unwrap();
    let client = connect(&url).await;
    let user = uuid::Uuid::new_v4();
    client
        .execute(
            "INSERT INTO live_streams (id, streamer_id, title) VALUES ('r1', $1, 't')",
            &[&user],
        )
        .await
        .unwrap();
    let viewer_count_type: String = client
        .query_one(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'live_streams' AND column_name = 'viewer_count'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(viewer_count_type, "integer");
    use tokio_postgres::error::SqlState;
    for (bad, by) in [
        (
            "UPDATE live_streams SET viewer_count = -1",
            SqlState::CHECK_VIOLATION,
        ),
        // Ended without ended_at.
        (
            "UPDATE live_streams SET is_live = false",
            SqlState::CHECK_VIOLATION,
        ),
        (
            "INSERT INTO live_streams (id, streamer_id, title) VALUES ('bad room', gen_random_uuid(), 't')",
            SqlState::CHECK_VIOLATION,
        ),
        (
            "INSERT INTO live_messages (room_name, user_id, text) VALUES ('nope', gen_random_uuid(), 'hi')",
            SqlState::FOREIGN_KEY_VIOLATION,
        ),
    ] {
        let refused = client.execute(bad, &[]).await.expect_err(bad);
        assert_eq!(refused.code(), Some(&by), "{bad}: {refused}");
    }
    client
        .execute(
            "INSERT INTO live_messages (room_name, user_id, text) VALUES ('r1', $1, 'hi')",
            &[&user],
        )
        .await
        .unwrap();
    client
        .batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        .await
        .unwrap();
    // The history's page (shared::store::chat::page): the room's visible
    // messages in the order the room got them (migration 0055).
    let plan = first_column(
        &client,
        "EXPLAIN SELECT id, room_name, user_id, text, created_at FROM live_messages
         WHERE room_name = 'r1' AND deleted_at IS NULL ORDER BY seq DESC LIMIT 50",
        &[],
    )
    .await;
    assert!(
        plan.join("\n").contains("live_messages_room_visible_seq_idx"),
        "{plan:?}"
    );
}

#[tokio::test]
async fn the_profile_key_exists_only_where_profiles_exist() {
    let has_fk = |client: tokio_postgres::Client| async move {
        client
            .query_opt(
                "SELECT 1 FROM pg_constraint WHERE conname = 'live_streams_streamer_id_fkey'",
                &[],
            )
            .await
            .unwrap()
            .is_some()
    };
    let bare = create_database().await;
    shared::store::migrate::migrate_url(&bare).await.unwrap();
    assert!(!has_fk(connect(&bare).await).await);

    let supabase_like = create_database().await;
    connect(&supabase_like)
        .await
        .batch_execute("CREATE TABLE public.profiles (id UUID PRIMARY KEY)")
        .await
        .unwrap();
    shared::store::migrate::migrate_url(&supabase_like).await.unwrap();
    assert!(has_fk(connect(&supabase_like).await).await);
}

/// The viewer rows that lost their foreign key in migration 0018 still go
/// with their stream, and still pin its id, as the keys did.
/// A foreign key whose referencing columns lead no index makes every
/// cascaded delete (and every check of a referenced key's update) scan the
/// whole referencing table: deleting a streamer's account, which cascades
/// through their streams and messages, would cost rows × table size.
#[tokio::test]
async fn every_foreign_key_has_an_index() {
    let url = create_database().await;
    shared::store::migrate::migrate_url(&url).await.unwrap();
    let client = connect(&url).await;
    let unindexed = first_column(
        &client,
        "SELECT c.conrelid::regclass::text || ' ' || c.conname
             FROM pg_constraint c
             WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
               AND NOT EXISTS (
                   SELECT FROM pg_index i
                   CROSS JOIN LATERAL (
                       SELECT array_agg(k) AS leading FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS u (k, position)
                       WHERE position <= cardinality(c.conkey)) l
                   WHERE i.indrelid = c.conrelid AND l.leading @> c.conkey AND l.leading <@ c.conkey)
             ORDER BY 1",
        &[],
    )
    .await;
    let keys: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(keys >= 10, "the schema's foreign keys were found: {keys}");
    assert!(
        unindexed.is_empty(),
        "foreign keys without an index: {unindexed:?}"
    );
}

#[tokio::test]
async fn a_deleted_stream_takes_its_viewer_rows_with_it() {
    let url = create_database().await;
    shared::store::migrate::migrate_url(&url).await.unwrap();
    let client = connect(&url).await;
    client
        .batch_execute(
            "INSERT INTO live_streams (id, streamer_id, title) VALUES ('gone', gen_random_uuid(), 't'), ('kept', gen_random_uuid(), 't');
             INSERT INTO live_participant_sessions (room_name, sid, identity, counted, joined)
                 VALUES ('gone', 'PA_1', 'ade', true, true), ('kept', 'PA_2', 'ade', true, true);
             INSERT INTO live_presence (room_name, identity, sessions) VALUES ('gone', 'ade', 1), ('kept', 'ade', 1);
             INSERT INTO live_viewers_seen (room_name, identity) VALUES ('gone', 'ade'), ('kept', 'ade');",
        )
        .await
        .unwrap();
    let renamed = client
        .execute("UPDATE live_streams SET id = 'renamed' WHERE id = 'kept'", &[])
        .await
        .expect_err("a stream with viewer rows keeps its id");
    assert_eq!(
        renamed.code(),
        Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
    );
    client
        .execute("DELETE FROM live_streams WHERE id = 'gone'", &[])
        .await
        .unwrap();
    for table in ["live_participant_sessions", "live_presence", "live_viewers_seen"] {
        let rooms: Vec<String> = client
            .query(&format!("SELECT room_name FROM {table} ORDER BY room_name"), &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(rooms, ["kept"], "{table}");
    }
}

#[tokio::test]
async fn tables_join_the_supabase_realtime_publication_where_it_exists() {
    let published = |client: tokio_postgres::Client| async move {
        client
            .query("SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'supabase_realtime' ORDER BY 1", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    let supabase_like = create_database().await;
    connect(&supabase_like)
        .await
        .batch_execute("CREATE PUBLICATION supabase_realtime")
        .await
        .unwrap();
    shared::store::migrate::migrate_url(&supabase_like).await.unwrap();
    assert_eq!(
        published(connect(&supabase_like).await).await,
        vec!["live_message_tombstones", "live_messages", "live_streams"]
    );

    let bare = create_database().await;
    shared::store::migrate::migrate_url(&bare).await.unwrap();
    let publications: i64 = connect(&bare)
        .await
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(publications, 0);
}

/// The reconciler prunes claims on room names after the same lifetime that
/// `live_start_stream` lets another streamer take one over after: one value,
/// [`shared::store::streams::CLAIM_LIFETIME`], written in two languages.
#[tokio::test]
async fn the_claim_lifetime_is_the_one_the_start_function_uses() {
    let url = create_database().await;
    shared::store::migrate::migrate_url(&url).await.unwrap();
    let source: String = connect(&url)
        .await
        .query_one(
            "SELECT prosrc FROM pg_proc WHERE proname = 'live_start_stream'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let lifetime = format!("interval '{}'", shared::store::streams::CLAIM_LIFETIME);
    assert!(
        source.contains(&lifetime),
        "live_start_stream does not use {lifetime}"
    );
}

/// Migration 0045 settles the chat of streams that ended before it: applied
/// to a database where two ended streams left messages unsent (one with its
/// batches' row, one whose chat never had a batch), it counts them there.
#[tokio::test]
async fn migration_0045_settles_the_chat_of_streams_that_ended_before_it() {
    let url = create_database().await;
    shared::store::migrate::migrate_url(&url).await.unwrap();
    let db = connect(&url).await;
    // The database as 0044 left it, with what a stream ended then kept.
    db.batch_execute(
        "DROP TRIGGER live_settle_chat_count ON live_streams;
         DROP FUNCTION live_settle_chat_count();
         DROP FUNCTION live_settle_chat(TEXT);
         DELETE FROM schema_migrations WHERE version = 45;
         INSERT INTO live_streams (id, streamer_id, title)
         VALUES ('batched', gen_random_uuid(), 't'), ('never-batched', gen_random_uuid(), 't');
         INSERT INTO live_messages (room_name, user_id, text)
         SELECT room, gen_random_uuid(), 'hi'
         FROM unnest(ARRAY['batched', 'batched', 'batched', 'never-batched', 'never-batched']) room;
         INSERT INTO live_chat_broadcasts (room_name, sent_up_to, messages_sent)
         SELECT 'batched', min(seq), 1 FROM live_messages WHERE room_name = 'batched';
         UPDATE live_streams SET is_live = false, ended_at = now();",
    )
    .await
    .unwrap();
    let applied = shared::store::migrate::migrate_url(&url).await.unwrap();
    assert_eq!(applied, vec!["0045_an_ended_streams_chat_count_is_final"]);
    assert_eq!(
        (
            crate::helpers::chat_settled(&db, "batched").await,
            crate::helpers::chat_settled(&db, "never-batched").await
        ),
        (Some((3, true)), Some((2, true)))
    );
}

/// The calls of the release before (while a deploy replaces its functions)
/// still post, read a token's access and change the stage, through the new
/// routines.
#[tokio::test]
async fn the_release_befores_calls_still_post_and_grant() {
    let app = crate::helpers::TestApp::spawn().await;
    let (host, viewer) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    app.start_stream(host, "before").await;
    let db = app.db().await;
    let posted = db
        .query_one(
            "SELECT outcome, text FROM live_chat_say('before', $1, 'from an old binary', 'chat:old', 10, 5)",
            &[&viewer],
        )
        .await
        .unwrap();
    assert_eq!(
        (posted.get::<_, String>(0), posted.get::<_, String>(1)),
        ("posted".to_owned(), "from an old binary".to_owned())
    );
    let access = db
        .query_one(
            "CALL live_token_access('before', $1, 'token:old', 60, 1000, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
            &[&viewer],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            access.get::<_, Option<i64>>("retry_after"),
            access.get::<_, uuid::Uuid>("streamer_id"),
            access.get::<_, bool>("is_live"),
            access.get::<_, bool>("on_stage"),
        ),
        (None, host, true, false)
    );
    let raised = db
        .query_one(
            "SELECT outcome, changed, hand_raised_at IS NOT NULL
             FROM live_stage_change_within_limit('before', $1, $1, 'raise', 3, 'stage:old', 60, 30)",
            &[&viewer],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            raised.get::<_, String>(0),
            raised.get::<_, bool>(1),
            raised.get::<_, bool>(2)
        ),
        ("ok".to_owned(), true, true)
    );
}

/// A migration that changes a table another transaction holds (a dashboard
/// query left open, a `pg_dump`) waits at most `LOCK_WAIT` for it, gives
/// way, and tries again a little later: the requests queued behind its wait
/// get through instead of failing at their own 2 s lock timeout (a deploy
/// was an outage for as long as the other transaction ran), and it applies
/// once the table is free.
#[tokio::test]
async fn a_migration_gives_way_to_a_transaction_holding_its_table() {
    use shared::store::migrate::{Migration, run_these};
    static LATER: &[Migration] = &[Migration {
        version: 10_000,
        name: "9999_a_later_change_to_the_chat",
        sql: "ALTER TABLE live_messages ADD COLUMN later_change INTEGER",
    }];
    let app = crate::helpers::TestApp::spawn().await;
    let room = "migrating";
    app.start_stream(uuid::Uuid::new_v4(), room).await;
    let mut holder_connection = connect(&app.database_url).await;
    let holder = holder_connection.transaction().await.unwrap();
    holder
        .execute("SELECT FROM live_messages LIMIT 1", &[])
        .await
        .unwrap();

    let (mut migrator, connection) = tokio_postgres::connect(&app.database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let migration = tokio::spawn(async move { run_these(&mut migrator, LATER).await });
    let not_done = std::sync::atomic::AtomicBool::new(false);
    assert!(
        app.until_a_statement_waits_for_a_lock(&not_done).await,
        "the migration waits for the held table"
    );
    for text in ["one", "two", "three"] {
        let body = serde_json::json!({"roomName": room, "text": text}).to_string();
        let posted = app
            .call(
                shared::handlers::post_message,
                Some(&app.token_for(uuid::Uuid::new_v4())),
                &body,
            )
            .await;
        assert_eq!(posted.status, 201, "{}", posted.body);
    }
    holder.rollback().await.unwrap();
    let applied = migration.await.unwrap().expect("applied once the table is free");
    assert_eq!(applied, ["9999_a_later_change_to_the_chat"]);
}
