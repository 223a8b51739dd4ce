//! `GET /live/chat`: a room's chat, newest first.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::chat_history).await
}
