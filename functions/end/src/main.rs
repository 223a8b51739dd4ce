//! `POST /live/end`: end a stream and close its LiveKit room.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::end_stream).await
}
