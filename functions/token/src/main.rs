//! `POST /live/token`: a LiveKit token to join a live stream.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::issue_token).await
}
