//! Everything the live-streaming Lambda functions share: configuration, Supabase
//! authentication, LiveKit tokens and room calls, the Postgres store, the HTTP
//! adapter and the endpoint handlers themselves.
//!
//! Each function binary is a thin entry point that calls [`http::serve`] with one
//! of the handlers in [`handlers`].

pub mod auth;
pub mod chat;
pub mod chat_broadcast;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod flush;
pub mod handlers;
pub mod http;
pub mod jwt_crypto;
pub mod livekit;
pub mod migrate;
pub mod rate_limit;
pub mod reactions;
pub mod reconcile;
pub mod room_rules;
pub mod secrets;
pub mod stage;
pub mod state;
pub mod stats;
pub mod streams;
pub mod tls;
pub mod viewers;

pub use error::ApiError;
pub use state::AppState;
