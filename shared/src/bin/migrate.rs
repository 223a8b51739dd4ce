//! `cargo run -p shared --bin migrate`: applies pending migrations to `DATABASE_URL`.
//! Use a direct (session) connection, not a transaction-mode pooler port.

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        eprintln!("migrate: set DATABASE_URL to the database to migrate");
        return ExitCode::FAILURE;
    };
    match shared::store::migrate::migrate_url(&url).await {
        Ok(applied) if applied.is_empty() => {
            println!("migrate: database is up to date");
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            for name in applied {
                println!("migrate: applied {name}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("migrate: {e}");
            ExitCode::FAILURE
        }
    }
}
