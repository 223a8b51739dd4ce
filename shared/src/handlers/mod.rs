//! The endpoint handlers: plain async functions of the state, the verified
//! caller and the parsed body. The HTTP adapter in [`crate::http`] does the rest.

pub mod chat;
mod end;
pub mod moderation;
mod start;
pub mod streams;
mod token;
pub mod token_source;
pub mod webhook;

pub use chat::{chat_history, delete_message, post_message};
pub use end::end_stream;
pub use moderation::moderate;
pub use start::start_stream;
pub use streams::{get_stream, list_streams};
pub use token::issue_token;
pub use token_source::issue_standard_token;
pub use webhook::LiveKitWebhook;
