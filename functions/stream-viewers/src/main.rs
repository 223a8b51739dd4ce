//! `GET /live/streams/{id}/viewers`: who is watching now.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::list_viewers).await
}
