//! `POST /live/chat`: send a chat message to a live stream.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::post_message).await
}
