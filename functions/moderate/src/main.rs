//! `POST /live/moderation`: the streamer kicks, bans or mutes a participant.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::moderate).await
}
