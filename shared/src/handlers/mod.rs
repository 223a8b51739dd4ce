//! The endpoint handlers: plain async functions of the state, the verified
//! caller and the parsed body. The HTTP adapter in [`crate::http`] does the rest.

mod end;
mod start;
pub mod streams;
mod token;
pub mod webhook;

pub use end::end_stream;
pub use start::start_stream;
pub use streams::{get_stream, list_streams};
pub use token::issue_token;
pub use webhook::LiveKitWebhook;
