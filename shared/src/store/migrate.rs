//! Plain-SQL migrations from `migrations/`, applied in order, each in its own
//! transaction, each recorded in `schema_migrations` with a checksum of its
//! SQL. Idempotent, and safe when two runs race: a transaction-scoped
//! advisory lock serialises them (it also works through a transaction-mode
//! pooler, unlike a session lock). A migration waits at most [`LOCK_WAIT`]
//! for a table another transaction holds, then gives way and tries again
//! ([`LOCK_ATTEMPTS`] times), so the requests queued behind it get through.
//! A migration whose file changed after it
//! was applied is refused: the database would keep the old SQL without a
//! word, so a change belongs in a new migration.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::types::Type;

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

macro_rules! migration {
    ($version:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../../../migrations/", $name, ".sql")),
        }
    };
}

/// Every migration, in the order it must apply.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_live_streams"),
    migration!(2, "0002_streamer_profile_fk"),
    migration!(3, "0003_viewers_and_room_lifecycle"),
    migration!(4, "0004_chat_and_moderation"),
    migration!(5, "0005_rate_limit_functions"),
    migration!(6, "0006_supabase_api_exposure"),
    migration!(7, "0007_room_instances_and_session_repair"),
    migration!(8, "0008_rate_limits_gcra_unlogged"),
    migration!(9, "0009_presence_counts_without_a_hot_row"),
    migration!(10, "0010_chat_batches_and_count_push"),
    migration!(11, "0011_concurrent_events_of_one_session"),
    migration!(12, "0012_stage_reactions_viewers_stats"),
    migration!(13, "0013_rate_limits_hot_updates"),
    migration!(14, "0014_token_access_procedure"),
    migration!(15, "0015_rate_limit_upsert_first"),
    migration!(16, "0016_token_access_calls_rate_limit_hit"),
    migration!(17, "0017_chat_posts_in_commit_order"),
    migration!(18, "0018_joins_without_a_key_share_lock"),
    migration!(19, "0019_no_create_on_public_for_every_role"),
    migration!(20, "0020_exact_peak_per_event"),
    migration!(21, "0021_a_retried_start_is_not_over_its_limit"),
    migration!(22, "0022_posts_taps_and_stage_changes_wait_for_ends_and_bans"),
    migration!(23, "0023_ends_take_locks_in_the_webhooks_order"),
    migration!(24, "0024_stage_changes_lock_their_row"),
    migration!(25, "0025_nothing_scans_the_history"),
    migration!(26, "0026_the_reconciler_touches_only_what_differs"),
    migration!(27, "0027_a_start_claims_its_name_before_the_room"),
    migration!(28, "0028_a_dropped_guest_keeps_the_stage_for_a_while"),
    migration!(29, "0029_a_vanished_room_ends_its_stream_when_it_vanished"),
    migration!(30, "0030_the_stage_waits_for_leaves_and_survives_lost_ones"),
    migration!(31, "0031_a_chat_batch_lets_go_only_of_its_own_lease"),
    migration!(32, "0032_a_late_chosen_leave_ends_only_its_own_away_turn"),
    migration!(33, "0033_a_quiet_rooms_chat_goes_out_at_once"),
    migration!(34, "0034_another_instances_join_is_still_held_to_the_rules"),
    migration!(35, "0035_refusals_do_not_use_up_a_limit"),
    migration!(36, "0036_a_refused_stage_change_does_not_use_up_the_limit"),
    migration!(37, "0037_a_start_is_checked_whole_before_livekit"),
    migration!(38, "0038_a_reconnect_keeps_its_viewer_counted"),
    migration!(39, "0039_a_new_room_instance_stops_the_missing_clock"),
    migration!(40, "0040_moderation_reads_the_stage_after_its_lock"),
    migration!(41, "0041_a_previous_instances_leave_closes_its_session"),
    migration!(42, "0042_unique_viewer_marks_are_pruned"),
    migration!(43, "0043_a_kick_ends_the_stage_turn"),
    migration!(44, "0044_taking_standing_away_is_never_limited"),
    migration!(45, "0045_an_ended_streams_chat_count_is_final"),
    migration!(
        46,
        "0046_deleting_an_account_removes_its_streams_whoever_deletes_it"
    ),
    migration!(47, "0047_the_reconciler_waits_for_ends_and_bans"),
    migration!(48, "0048_subscribers_learn_of_deleted_messages"),
    migration!(49, "0049_cascades_and_the_flusher_wait_for_nothing"),
    migration!(50, "0050_no_standing_no_return_clock"),
    migration!(51, "0051_unsent_reactions_and_a_cheap_chat_settle"),
    migration!(52, "0052_a_failed_chat_batch_spaces_the_next"),
    migration!(53, "0053_one_sync_of_a_room_at_a_time"),
    migration!(54, "0054_back_too_late_is_off_the_stage"),
    migration!(55, "0055_history_in_the_rooms_order"),
    migration!(56, "0056_a_repeated_withdrawal_has_its_own_allowance"),
    migration!(57, "0057_a_retried_post_is_stored_once"),
    migration!(58, "0058_a_token_for_a_guest_back_too_late"),
    migration!(59, "0059_the_release_befores_calls_take_the_new_paths"),
    migration!(60, "0060_a_lapsed_invitation_cannot_be_accepted"),
    migration!(61, "0061_the_functions_role_may_use_schema_public"),
    migration!(62, "0062_a_deleted_streams_room_is_closed"),
    migration!(63, "0063_a_deleted_streams_room_name_has_no_owner"),
    migration!(64, "0064_a_room_found_missing_is_still_closed"),
    migration!(65, "0065_a_stream_its_host_left_ends"),
    migration!(66, "0066_the_reconcilers_sync_is_planned_for_its_listing"),
    migration!(67, "0067_an_ended_streams_counts_are_folded"),
    migration!(68, "0068_raised_hands_in_commit_order_and_only_while_watching"),
    migration!(69, "0069_the_functions_update_only_the_columns_they_write"),
    migration!(70, "0070_a_deleted_account_takes_its_chat_along"),
    migration!(71, "0071_the_fold_and_the_host_left_check_wait_for_nothing"),
    migration!(72, "0072_a_token_takes_a_viewer_in_the_room_as_back"),
    migration!(73, "0073_lapsed_turns_read_presence_after_their_locks"),
    migration!(74, "0074_no_function_left_that_nothing_calls"),
];

/// Arbitrary but fixed key for `pg_advisory_xact_lock`.
const LOCK_KEY: i64 = 0x6c69_7665_6d69_6772; // "livemigr"

/// How long a migration waits for a lock on a table before giving way:
/// below the functions' own `lock_timeout` (2 s, migration 0006), so a
/// request queued behind the migration's wait still gets through.
pub const LOCK_WAIT: &str = "1s";

/// Attempts at a migration whose locks are held elsewhere, 2, 4, 8, 8… s
/// apart, before the run stops and says so.
pub const LOCK_ATTEMPTS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("database error while applying {name}: {source}")]
    Apply {
        name: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("migration {version} is recorded as {recorded:?} but this build calls it {expected:?}")]
    Mismatch {
        version: i32,
        recorded: String,
        expected: &'static str,
    },
    #[error(
        "migration {name} could not take its locks: each of {attempts} attempts gave way after waiting {LOCK_WAIT} \
         for a table another transaction holds (pg_stat_activity shows it, state 'idle in transaction' or a long \
         query); end that transaction and run the migrations again"
    )]
    Blocked { name: &'static str, attempts: u32 },
    #[error(
        "migration {name} was applied from other SQL than this build's migrations/{name}.sql: an applied \
         migration must not change (the database keeps what it ran); put the change into a new migration"
    )]
    Changed { name: &'static str },
}

/// The SHA-256 of a migration's SQL, in hex, carriage returns left out: a
/// checkout that turned its line ends into CRLF holds the same migration.
pub fn checksum(sql: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, sql.replace('\r', "").as_bytes())
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Applies every pending migration. Returns the names of those applied now.
pub async fn run(client: &mut Client) -> Result<Vec<&'static str>, MigrateError> {
    run_these(client, MIGRATIONS).await
}

/// [`run`] with `migrations` (tests add one of their own).
pub async fn run_these(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<Vec<&'static str>, MigrateError> {
    // The bookkeeping table, once a run, under the lock. The checksum came
    // later: a database migrated before it has rows without one, which the
    // loop below fills in.
    {
        let wrap = |source| MigrateError::Apply {
            name: "schema_migrations",
            source,
        };
        let tx = client.transaction().await.map_err(wrap)?;
        tx.query_typed("SELECT pg_advisory_xact_lock($1)", &[(&LOCK_KEY, Type::INT8)])
            .await
            .map_err(wrap)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    INTEGER PRIMARY KEY,
                name       TEXT NOT NULL,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            );
            ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum TEXT",
        )
        .await
        .map_err(wrap)?;
        tx.commit().await.map_err(wrap)?;
    }
    let mut applied = Vec::new();
    for migration in migrations {
        let mut attempt = 1;
        loop {
            match apply(client, migration).await {
                Ok(true) => applied.push(migration.name),
                Ok(false) => {}
                Err(MigrateError::Apply { source, .. }) if waited_for_a_lock(&source) => {
                    if attempt == LOCK_ATTEMPTS {
                        return Err(MigrateError::Blocked {
                            name: migration.name,
                            attempts: LOCK_ATTEMPTS,
                        });
                    }
                    eprintln!(
                        "migrate: {} waited {LOCK_WAIT} for a lock another transaction holds (attempt {attempt} of \
                         {LOCK_ATTEMPTS}); trying again",
                        migration.name
                    );
                    tokio::time::sleep(Duration::from_secs(1 << attempt.min(3))).await;
                    attempt += 1;
                    continue;
                }
                Err(error) => return Err(error),
            }
            break;
        }
    }
    Ok(applied)
}

fn waited_for_a_lock(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
}

/// Applies `migration` unless it is recorded (checking it is the same SQL),
/// in one transaction; returns whether it was applied now.
async fn apply(client: &mut Client, migration: &Migration) -> Result<bool, MigrateError> {
    let wrap = |source| MigrateError::Apply {
        name: migration.name,
        source,
    };
    let tx = client.transaction().await.map_err(wrap)?;
    tx.query_typed("SELECT pg_advisory_xact_lock($1)", &[(&LOCK_KEY, Type::INT8)])
        .await
        .map_err(wrap)?;
    // Every request on a table waits behind a migration's queued lock on it,
    // and the functions give up after their own 2 s: a migration waits at
    // most LOCK_WAIT for a table a long transaction holds, gives way, and
    // tries again a little later.
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_WAIT}'"))
        .await
        .map_err(wrap)?;
    let ours = checksum(migration.sql);
    let recorded = tx
        .query_typed(
            "SELECT name, checksum FROM schema_migrations WHERE version = $1",
            &[(&migration.version, Type::INT4)],
        )
        .await
        .map_err(wrap)?;
    if let Some(row) = recorded.first() {
        let name: String = row.get(0);
        if name != migration.name {
            return Err(MigrateError::Mismatch {
                version: migration.version,
                recorded: name,
                expected: migration.name,
            });
        }
        match row.get::<_, Option<String>>(1) {
            Some(theirs) if theirs == ours => {}
            Some(_) => return Err(MigrateError::Changed { name: migration.name }),
            // Applied before checksums were kept: this file is taken as
            // what ran, and held to from now on.
            None => {
                tx.query_typed(
                    "UPDATE schema_migrations SET checksum = $2 WHERE version = $1",
                    &[(&migration.version, Type::INT4), (&ours, Type::TEXT)],
                )
                .await
                .map_err(wrap)?;
                tx.commit().await.map_err(wrap)?;
            }
        }
        return Ok(false);
    }
    tx.batch_execute(migration.sql).await.map_err(wrap)?;
    tx.query_typed(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        &[
            (&migration.version, Type::INT4),
            (&migration.name, Type::TEXT),
            (&ours, Type::TEXT),
        ],
    )
    .await
    .map_err(wrap)?;
    tx.commit().await.map_err(wrap)?;
    Ok(true)
}

/// Connects to `url` (TLS as the URL asks) and applies pending migrations.
pub async fn migrate_url(url: &str) -> Result<Vec<&'static str>, Box<dyn std::error::Error + Send + Sync>> {
    let (pg, tls_mode) = crate::config::parse_database_url(url)?;
    let ca = std::env::var(crate::config::DATABASE_CA_CERT)
        .ok()
        .filter(|c| !c.is_empty());
    let tls = crate::tls::postgres_client_config(tls_mode, ca.as_deref())?;
    let (mut client, connection) = pg
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
        .await?;
    let connection = tokio::spawn(connection);
    let applied = run(&mut client).await?;
    drop(client);
    let _ = connection.await;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    /// A checkout that turned line ends into CRLF holds the same migrations.
    #[test]
    fn a_checksum_ignores_carriage_returns() {
        assert_eq!(
            super::checksum("SELECT 1;\r\nSELECT 2;\r\n"),
            super::checksum("SELECT 1;\nSELECT 2;\n")
        );
        assert_ne!(super::checksum("SELECT 1;"), super::checksum("SELECT 2;"));
    }

    /// A file added to `migrations/` but not to [`MIGRATIONS`] would never
    /// run, and every test would pass without it.
    #[test]
    fn every_file_in_migrations_is_listed_once_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter_map(|name| name.strip_suffix(".sql").map(str::to_owned))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(listed, files);
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, index + 1, "{}", migration.name);
            assert!(
                migration.name.starts_with(&format!("{:04}_", migration.version)),
                "{}",
                migration.name
            );
        }
    }
}
