//! `GET /live/streams/{id}`: one stream, live or ended.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::get_stream).await
}
