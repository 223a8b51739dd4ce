//! Everything the live-streaming Lambda functions share. An endpoint's whole
//! path, in the order a request takes it:
//!
//! - `functions/<name>/src/main.rs` calls [`http::serve`] with one handler;
//! - [`http`]: the adapter (method, bearer check by [`auth`], body parsing
//!   into [`domain`] types, the one mapping of [`ApiError`] to a response);
//! - [`handlers`]: one module per endpoint, plain async functions of the
//!   state, the caller and the request;
//! - [`store`]: Postgres, one module per table family (streams, viewers,
//!   chat, the stage, reactions, stats, rate limits) and the pool;
//! - [`livekit`]: tokens, RoomService calls, and the rules LiveKit must
//!   enforce because of what Postgres says;
//! - [`scheduled`]: what EventBridge runs (the count flusher, the reconciler).
//!
//! Built once per cold start: [`logging`], [`config`] (with [`secrets`]),
//! [`tls`], [`jwt_crypto`], gathered in [`AppState`].

pub mod auth;
pub mod config;
pub mod domain;
pub mod error;
pub mod handlers;
pub mod http;
pub mod jwt_crypto;
pub mod livekit;
pub mod logging;
pub mod scheduled;
pub mod secrets;
pub mod state;
pub mod store;
pub mod tls;

pub use error::ApiError;
pub use state::AppState;
