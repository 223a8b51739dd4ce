//! `GET /live/streams/{id}/stats`: how the stream did, for its streamer.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    shared::http::serve(shared::handlers::stream_stats).await
}
