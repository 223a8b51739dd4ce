//! `POST /live/webhook`: LiveKit's signed webhooks keep viewer counts and room state.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve_endpoint(shared::handlers::LiveKitWebhook).await
}
