//! `POST /live/stage/invite`: the streamer invites a viewer on stage.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::invite_to_stage).await
}
