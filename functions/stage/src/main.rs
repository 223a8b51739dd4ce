//! `GET /live/stage`: the streamer's view of the stage: guests, invitations, raised hands.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::stage_state).await
}
