//! The endpoint handlers: plain async functions of the state, the verified
//! caller and the parsed body. The HTTP adapter in [`crate::http`] does the rest.

mod end;
mod start;
mod token;

pub use end::end_stream;
pub use start::start_stream;
pub use token::issue_token;
