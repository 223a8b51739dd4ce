//! Scheduled: reconciles live streams with LiveKit's rooms and participants.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    shared::reconcile::serve().await
}
