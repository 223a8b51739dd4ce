//! A TCP proxy in front of Postgres that adds a fixed delay to every answer,
//! as a transaction-mode pooler or a database in another zone does: each
//! round trip costs `delay` more. It also counts the client's request bursts
//! (one per round trip), so a run can say how many round trips a request made.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::time::Instant;

pub struct LatencyProxy {
    pub port: u16,
    /// Client-to-server writes seen: round trips, give or take pipelining.
    pub requests: Arc<AtomicU64>,
}

impl LatencyProxy {
    pub async fn start(target: SocketAddr, delay: Duration) -> LatencyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("bound").port();
        let requests = Arc::new(AtomicU64::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let _ = inbound.set_nodelay(true);
                let counted = counted.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = outbound.set_nodelay(true);
                    let (client_read, client_write) = inbound.into_split();
                    let (server_read, server_write) = outbound.into_split();
                    tokio::spawn(forward(client_read, server_write, Duration::ZERO, Some(counted)));
                    tokio::spawn(forward(server_read, client_write, delay, None));
                });
            }
        });
        LatencyProxy { port, requests }
    }
}

/// Chunks waiting for their time, each with when it is due (an empty one: the end).
type Pending = VecDeque<(Instant, Vec<u8>)>;

/// Copies `from` to `to`, each chunk `delay` after it arrived, in order.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    count: Option<Arc<AtomicU64>>,
) {
    if delay.is_zero() {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            if let Some(count) = &count {
                count.fetch_add(1, Ordering::Relaxed);
            }
            if to.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
        return;
    }
    let queue: Arc<Mutex<Pending>> = Arc::default();
    let notify = Arc::new(tokio::sync::Notify::new());
    let (writer_queue, writer_notify) = (queue.clone(), notify.clone());
    let writer = tokio::spawn(async move {
        loop {
            let next = writer_queue.lock().await.pop_front();
            match next {
                Some((due, chunk)) if chunk.is_empty() => {
                    tokio::time::sleep_until(due).await;
                    break;
                }
                Some((due, chunk)) => {
                    tokio::time::sleep_until(due).await;
                    if to.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                None => writer_notify.notified().await,
            }
        }
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buffer).await.unwrap_or(0);
        queue
            .lock()
            .await
            .push_back((Instant::now() + delay, buffer[..n].to_vec()));
        notify.notify_one();
        if n == 0 {
            break;
        }
    }
    let _ = writer.await;
}
