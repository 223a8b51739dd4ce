//! A TCP proxy in front of Postgres that adds a fixed delay to every answer,
//! as a transaction-mode pooler or a database in another zone does: each
//! round trip costs `delay` more. It also counts the client's request bursts
//! (one per round trip), so a run can say how many round trips a request made,
//! and sums the database's time on them: from a request's first byte passing
//! to the server until its answer's first byte comes back, before the delay.

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
    /// Nanoseconds the server took to start answering, summed over round trips.
    pub server_nanos: Arc<AtomicU64>,
}

/// One connection's round trip in flight: when its request went to the server.
type SentAt = Arc<std::sync::Mutex<Option<Instant>>>;

impl LatencyProxy {
    pub async fn start(target: SocketAddr, delay: Duration) -> LatencyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("bound").port();
        let requests = Arc::new(AtomicU64::new(0));
        let server_nanos = Arc::new(AtomicU64::new(0));
        let (counted, timed) = (requests.clone(), server_nanos.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let _ = inbound.set_nodelay(true);
                let (counted, timed) = (counted.clone(), timed.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = outbound.set_nodelay(true);
                    let (client_read, client_write) = inbound.into_split();
                    let (server_read, server_write) = outbound.into_split();
                    let sent_at = SentAt::default();
                    tokio::spawn(forward(
                        client_read,
                        server_write,
                        Duration::ZERO,
                        Side::Requests(counted, sent_at.clone()),
                    ));
                    tokio::spawn(forward(
                        server_read,
                        client_write,
                        delay,
                        Side::Answers(timed, sent_at),
                    ));
                });
            }
        });
        LatencyProxy {
            port,
            requests,
            server_nanos,
        }
    }
}

/// Chunks waiting for their time, each with when it is due (an empty one: the end).
type Pending = VecDeque<(Instant, Vec<u8>)>;

/// Which way a copy goes, with what it measures.
enum Side {
    /// Client to server: counts the requests and notes when one went out.
    Requests(Arc<AtomicU64>, SentAt),
    /// Server to client: adds the time since the request went out.
    Answers(Arc<AtomicU64>, SentAt),
}

impl Side {
    fn saw(&self, now: Instant) {
        match self {
            Side::Requests(count, sent_at) => {
                count.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut sent_at) = sent_at.lock() {
                    sent_at.get_or_insert(now);
                }
            }
            Side::Answers(nanos, sent_at) => {
                let sent = sent_at.lock().ok().and_then(|mut sent_at| sent_at.take());
                if let Some(sent) = sent {
                    let took = u64::try_from((now - sent).as_nanos()).unwrap_or(u64::MAX);
                    nanos.fetch_add(took, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Copies `from` to `to`, each chunk `delay` after it arrived, in order.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    side: Side,
) {
    if delay.is_zero() {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            side.saw(Instant::now());
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
        if n > 0 {
            side.saw(Instant::now());
        }
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
