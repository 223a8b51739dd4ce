//! Integration tests: the handlers and the HTTP adapter against a real Postgres
//! (a fresh Supabase-like database per test), LiveKit's real server (one per
//! test app, webhooks to the app) with real participants on LiveKit's Python
//! SDK, a JWKS endpoint on loopback, real JWTs, and LiveKit's own SDKs checking
//! our tokens.
//! `scripts/test` starts Postgres and moto and sets `TEST_DATABASE_URL` and
//! `TEST_MOTO_ENDPOINT`.

mod helpers;
mod livekit_server;

mod adapter;
mod api_role;
mod auth;
mod chat;
mod end;
mod faults;
mod fuzz;
mod interactive;
mod listing;
mod logs;
mod migrations;
mod moderation;
mod openapi;
mod outages;
mod pgbouncer;
mod races;
mod rate_limits;
mod real_clients;
mod reconcile;
mod rotation;
mod round_trips;
mod secrets;
mod start;
mod supabase_api;
mod template;
mod tls;
mod token;
mod token_source;
mod webhook;
