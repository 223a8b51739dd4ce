//! `cargo run -p livekit-stub -- [--port 7880] [--api-key devkey] [--api-secret secret]`
//!
//! Serves the RoomService stand-in for local development when no
//! `livekit-server --dev` is running. Rooms live in memory until it stops.

use std::net::SocketAddr;
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut port = 7880u16;
    let mut api_key = "devkey".to_owned();
    let mut api_secret = "secret".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let Some(value) = args.next() else {
            eprintln!("livekit-stub: {arg} needs a value");
            return ExitCode::FAILURE;
        };
        match arg.as_str() {
            "--port" => match value.parse() {
                Ok(p) => port = p,
                Err(_) => {
                    eprintln!("livekit-stub: --port takes a number");
                    return ExitCode::FAILURE;
                }
            },
            "--api-key" => api_key = value,
            "--api-secret" => api_secret = value,
            other => {
                eprintln!("livekit-stub: unknown argument {other}");
                return ExitCode::FAILURE;
            }
        }
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    match livekit_stub::LiveKitStub::start(addr, &api_key, &api_secret).await {
        Ok(stub) => {
            println!(
                "livekit-stub: RoomService stand-in on {} (no media)",
                stub.ws_url()
            );
            std::future::pending::<()>().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("livekit-stub: cannot listen on {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}
