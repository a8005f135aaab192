//! Idle connections to the bridge's admin port cannot starve its loopback data port
//! (issue 12 item 11): the real binary with its file-descriptor limit lowered by `prlimit`,
//! more idle admin connections than that limit, then a real request on the data port.

mod support;

use std::process::Command;
use std::time::Duration;

use sanctum_testkit::{DEFAULT_ANSWER, ProviderConfig};
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_port_answers_while_the_admin_port_is_flooded_with_idle_connections() {
    let env = start(Some(ProviderConfig::default())).await;
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", env.bridge.id()))
        .arg("--nofile=128:128")
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit failed: {status}");

    // More than the limit: on the old code they held every descriptor, and the data
    // port's accept failed with EMFILE for as long as they stayed (no deadline).
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(env.admin).await.expect("connect to the admin port"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        request(
            env.listen,
            "POST",
            "/v1/messages",
            &[("content-type", "application/json")],
            &body_json(false),
        ),
    )
    .await
    .expect("the data port answers while the admin port holds idle connections");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["content"][0]["text"], DEFAULT_ANSWER);

    // Beyond the admin cap (32), connections were closed at once, not left to pile up.
    let mut closed = 0;
    for stream in &mut idle[100..] {
        let mut buf = [0u8; 1];
        if matches!(
            tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        ) {
            closed += 1;
        }
    }
    assert_eq!(closed, 100, "connections beyond the admin cap must be closed");
}
