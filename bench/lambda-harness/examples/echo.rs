//! The floor of every end-to-end figure: a Lambda on the same runtime crate as
//! ours (`lambda_runtime`, tokio's current-thread runtime) that answers every
//! event with a bare 200 without looking at it. What `lambda-harness` measures
//! for it is the Runtime API round trip, the event's JSON parse and the
//! response's serialization: the part of a function's latency that is not its
//! handler.
//!
//!   cargo build --release -p lambda-harness --example echo
//!   target/release/lambda-harness --binary target/release/examples/echo --event events/token.json --invocations 3000

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|_event: LambdaEvent<Value>| async {
        Ok::<_, Error>(json!({ "statusCode": 200 }))
    }))
    .await
}
