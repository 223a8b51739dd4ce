//! `POST /live/token-source`: LiveKit's standard token endpoint for the client SDKs' `TokenSource`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::issue_standard_token).await
}
