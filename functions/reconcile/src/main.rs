//! Scheduled: reconciles live streams with LiveKit's rooms and participants.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::scheduled::reconcile::serve().await
}
