//! `POST /live/start`: go live.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::start_stream).await
}
