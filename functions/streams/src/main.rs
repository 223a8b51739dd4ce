//! `GET /live/streams`: live streams, newest first, paginated.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::list_streams).await
}
