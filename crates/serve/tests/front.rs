//! The front door against real clients on loopback: slow headers, stalled and dripping bodies, a crowd holding
//! most of large bodies, more connections than allowed.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    routing::{get, post},
};
use clap::Parser;
use prometheus_client::{encoding::text::encode, registry::Registry};
use serve::{Front, Limits, Site};
use test_support::until;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(10);

struct Server {
    addr: SocketAddr,
    front: Front,
    cancel: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn start(limits: Limits, max_body_bytes: usize) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let front = Front::new(limits);
    let cancel = CancellationToken::new();
    let router = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/echo", post(|body: Bytes| async move { body.len().to_string() }));
    let site = Site::new("test", max_body_bytes);
    tokio::spawn({
        let (front, cancel) = (front.clone(), cancel.clone());
        async move { front.serve(listener, site, router, cancel).await }
    });
    Server { addr, front, cancel }
}

fn limits() -> Limits {
    Limits {
        header_read_timeout: Duration::from_secs(5),
        body_idle_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(5),
        ..Limits::default()
    }
}

/// Everything the server sends until it closes the connection (bounded).
async fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(BOUND, stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server neither answered nor closed within {BOUND:?}");
    String::from_utf8_lossy(&out).into_owned()
}

/// The status line's code of a response that ends with the connection.
async fn status(stream: &mut TcpStream) -> String {
    let response = read_all(stream).await;
    response.split(' ').nth(1).unwrap_or("none").to_owned()
}

/// Waits (bounded) until the buffered bytes are `n`, woken by the budget's changes.
async fn buffered(front: &Front, n: usize) {
    let budget = front.budget();
    until(&mut budget.subscribe(), BOUND, &format!("{n} buffered bytes"), || {
        budget.used() == n
    })
    .await;
}

fn metrics(front: &Front) -> String {
    let mut registry = Registry::default();
    front.register_metrics(&mut registry);
    let mut out = String::new();
    encode(&mut out, &registry).unwrap();
    out
}

/// A client that sent a whole `n`-byte body (or as much as the server read before answering).
async fn send_body(addr: SocketAddr, n: usize) -> TcpStream {
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(post_head(n).as_bytes()).await.unwrap();
    // The server may answer before reading everything; a refused write is then expected.
    let _ = client.write_all(&vec![b'b'; n]).await;
    client
}

fn post_head(length: usize) -> String {
    format!("POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {length}\r\n\r\n")
}

#[tokio::test]
async fn unfinished_headers_and_idle_keep_alives_are_closed_after_the_header_timeout() {
    let server = start(
        Limits {
            header_read_timeout: Duration::from_millis(300),
            ..limits()
        },
        1 << 20,
    )
    .await;
    let started = Instant::now();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    read_all(&mut half).await;
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A complete request is answered; the connection, kept alive, then closes once idle that long.
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let response = read_all(&mut kept).await;
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("ok"),
        "{response}"
    );
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_holds_nothing_after() {
    let server = start(
        Limits {
            body_idle_timeout: Duration::from_millis(300),
            ..limits()
        },
        1 << 20,
    )
    .await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    client
        .write_all(format!("{head}5\r\nhello\r\n").as_bytes())
        .await
        .unwrap();
    buffered(&server.front, 5).await;
    let response = read_all(&mut client).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("body_idle"), "{response}");
    assert_eq!(server.front.budget().used(), 0);
    let text = metrics(&server.front);
    assert!(
        text.contains(r#"http_requests_rejected_total{listener="test",reason="body_idle"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_body_dripping_under_the_idle_timeout_still_ends_at_the_body_deadline() {
    let server = start(
        Limits {
            body_idle_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_millis(400),
            ..limits()
        },
        1 << 20,
    )
    .await;
    let client = TcpStream::connect(server.addr).await.unwrap();
    let (mut read, mut write) = client.into_split();
    let started = Instant::now();
    // A byte every 50 ms: steady enough for the idle timeout, too slow for the deadline.
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let drip = tokio::spawn(async move {
        if write.write_all(post_head(100).as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..100 {
            if write.write_all(b"x").await.is_err() {
                return;
            }
            pace.tick().await;
        }
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(BOUND, read.read_to_end(&mut out)).await;
    let response = String::from_utf8_lossy(&out);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("body_timeout"), "{response}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the deadline, not the drip, ended it"
    );
    drip.abort();
}

#[tokio::test]
async fn past_the_buffered_byte_budget_requests_get_503_until_the_holder_leaves() {
    let server = start(
        Limits {
            max_buffered_bytes: 1 << 20,
            ..limits()
        },
        8 << 20,
    )
    .await;
    // A holds 900 KiB of a declared 2 MiB and stalls.
    let mut holder = TcpStream::connect(server.addr).await.unwrap();
    holder.write_all(post_head(2 << 20).as_bytes()).await.unwrap();
    holder.write_all(&vec![b'a'; 900 << 10]).await.unwrap();
    buffered(&server.front, 900 << 10).await;

    let mut refused = send_body(server.addr, 200 << 10).await;
    let response = read_all(&mut refused).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.to_ascii_lowercase().contains("retry-after: 1"), "{response}");
    let text = metrics(&server.front);
    assert!(text.contains(r#"reason="over_budget"} 1"#), "{text}");
    assert!(
        text.contains(&format!("http_buffered_request_bytes {}", 900 << 10)),
        "{text}"
    );

    drop(holder);
    buffered(&server.front, 0).await;
    let mut accepted = send_body(server.addr, 200 << 10).await;
    let response = read_all(&mut accepted).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with(&(200usize << 10).to_string()), "{response}");
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_a_byte_is_read_and_a_claim_reserves_nothing() {
    let server = start(limits(), 1 << 20).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client.write_all(post_head(16 << 20).as_bytes()).await.unwrap();
    assert_eq!(status(&mut client).await, "413");

    // Under the limit, a claimed megabyte with one byte sent holds one byte of the budget.
    let mut claim = TcpStream::connect(server.addr).await.unwrap();
    claim.write_all(post_head(1 << 20).as_bytes()).await.unwrap();
    claim.write_all(b"x").await.unwrap();
    buffered(&server.front, 1).await;
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_on_accept_and_counted() {
    let server = start(
        Limits {
            max_connections: 2,
            ..limits()
        },
        1 << 20,
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = TcpStream::connect(server.addr).await.unwrap();
        // A full request proves the connection was accepted and served; it stays open (keep-alive).
        client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 12];
        tokio::time::timeout(BOUND, client.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(client);
    }
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(read_all(&mut third).await, "", "closed without an answer");
    let text = metrics(&server.front);
    assert!(
        text.contains(r#"http_connections_refused_total{listener="test"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"http_connections{listener="test"} 2"#), "{text}");

    held.pop();
    let open = server.front.connections();
    until(&mut open.clone(), BOUND, "the closed connection's slot is free", || {
        *open.borrow() == 1
    })
    .await;
    let mut fourth = TcpStream::connect(server.addr).await.unwrap();
    fourth
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status(&mut fourth).await, "200");
}

#[test]
fn the_flag_defaults_are_the_default_limits() {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: Limits,
    }
    assert_eq!(Cli::parse_from(["x"]).limits, Limits::default());
    let set = Cli::parse_from([
        "x",
        "--header-read-timeout=1s",
        "--body-idle-timeout=2s",
        "--body-timeout=3s",
        "--max-buffered-bytes=4",
        "--max-connections=5",
    ]);
    assert_eq!(
        set.limits,
        Limits {
            header_read_timeout: Duration::from_secs(1),
            body_idle_timeout: Duration::from_secs(2),
            body_timeout: Duration::from_secs(3),
            max_buffered_bytes: 4,
            max_connections: 5,
        }
    );
}
