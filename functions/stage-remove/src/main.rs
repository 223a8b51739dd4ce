//! `POST /live/stage/remove`: the streamer takes a guest off the stage, or a guest leaves.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::remove_from_stage).await
}
