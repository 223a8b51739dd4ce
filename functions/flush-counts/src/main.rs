//! Scheduled: copies viewer counts into `live_streams` for Realtime, once a
//! second, for the length of one invocation.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::scheduled::flush::serve().await
}
