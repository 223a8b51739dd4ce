//! `POST /live/stage/decline`: the invitee declines.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::decline_stage).await
}
