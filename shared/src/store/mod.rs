//! Postgres: the pool, the migrations, and one module per table family.
//! A request's queries are single unnamed statements (`query_typed`), one
//! round trip each and safe behind Supabase's transaction-mode pooler; the
//! multi-step rules live in PL/pgSQL functions of `migrations/`. Only the
//! migrations run transactions of several statements, as the owner.

pub mod chat;
pub mod chat_broadcast;
pub mod db;
pub mod migrate;
pub mod rate_limit;
pub mod reactions;
pub mod stage;
pub mod stats;
pub mod streams;
pub mod viewers;
