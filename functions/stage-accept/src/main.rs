//! `POST /live/stage/accept`: the invitee comes on stage.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::accept_stage).await
}
