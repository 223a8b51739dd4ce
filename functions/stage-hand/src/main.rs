//! `POST /live/stage/hand`: a viewer raises or lowers their hand.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::raise_hand).await
}
