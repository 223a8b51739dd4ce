//! `DELETE /live/chat/{id}`: the author or the streamer deletes a message.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::delete_message).await
}
