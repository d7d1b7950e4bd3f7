//! The dashboard's listener behind the front door: a client that never finishes its headers or its upload is
//! cut off, and `/metrics` says so.

mod common;

use std::time::Duration;

use clap::Parser as _;
use common::temp_dir;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// Everything the dashboard sends until it closes the connection (bounded).
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the dashboard neither answered nor closed")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn slow_headers_and_stalled_uploads_are_cut_off_and_counted() {
    let dir = temp_dir("front");
    let db = dir.join("switchyard.db");
    let dashboard = dashboard::start(dashboard::args::Args::parse_from([
        "dashboard",
        "--listen",
        "127.0.0.1:0",
        "--db",
        db.to_str().unwrap(),
        "--login-token",
        "login",
        "--ingest-token",
        "ingest",
        "--header-read-timeout",
        "300ms",
        "--body-idle-timeout",
        "300ms",
    ]))
    .await
    .unwrap();

    let mut slow = TcpStream::connect(dashboard.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    assert_eq!(until_closed(&mut slow).await, "", "closed without an answer");

    let mut upload = TcpStream::connect(dashboard.addr).await.unwrap();
    let head =
        "POST /api/v1/ingest HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ingest\r\ncontent-length: 1000\r\n\r\n";
    upload
        .write_all(format!("{head}{{\"decisions\":").as_bytes())
        .await
        .unwrap();
    let response = until_closed(&mut upload).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");

    let mut metrics = TcpStream::connect(dashboard.addr).await.unwrap();
    metrics
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let text = until_closed(&mut metrics).await;
    assert!(
        text.contains(
            r#"switchyard_dashboard_http_requests_rejected_total{listener="dashboard",reason="body_idle"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("switchyard_dashboard_http_buffered_request_bytes 0"),
        "{text}"
    );
    dashboard.stop().await;
}
