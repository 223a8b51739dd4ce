//! `POST /live/reactions`: a reaction, told to the room in aggregate.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::react).await
}
