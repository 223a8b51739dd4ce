//! The endpoint handlers: plain async functions of the state, the verified
//! caller and the parsed body. The HTTP adapter in [`crate::http`] does the rest.

pub mod audience;
pub mod chat;
mod end;
pub mod moderation;
pub mod reactions;
pub mod stage;
mod start;
pub mod streams;
mod token;
pub mod token_source;
pub mod webhook;

pub use audience::{list_viewers, stream_stats};
pub use chat::{chat_history, delete_message, post_message};
pub use end::end_stream;
pub use moderation::moderate;
pub use reactions::react;
pub use stage::{
    accept as accept_stage, decline as decline_stage, invite as invite_to_stage, raise_hand,
    remove as remove_from_stage, stage_state,
};
pub use start::start_stream;
pub use streams::{get_stream, list_streams};
pub use token::issue_token;
pub use token_source::issue_standard_token;
pub use webhook::LiveKitWebhook;
