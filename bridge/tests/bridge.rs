//! The real `sanctum-bridge` binary against the stand-in provider on a real Unix socket:
//! credential stripping, token rotation, smuggling, error contract, streaming, cancellation,
//! concurrency, admin port, shutdown.

mod support;

use std::time::{Duration, Instant};

use sanctum_testkit::{DEFAULT_ANSWER, ProviderConfig, jwt};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_are_replaced_in_every_case_and_count() {
    let env = start(Some(ProviderConfig::default())).await;
    let body = body_json(false);
    let reply = request(
        env.listen,
        "POST",
        "/v1/messages?beta=true",
        &[
            ("Authorization", "Bearer forged-one"),
            ("authorization", "Basic Zm9yZ2Vk"),
            ("AUTHORIZATION", "Bearer forged-three"),
            ("Proxy-Authorization", "Basic cHJveHk="),
            ("X-Api-Key", PLACEHOLDER),
            ("x-API-key", "sk-ant-planted"),
            ("TXN-TOKEN", "forged-trat"),
            ("Txn-Token", "forged-trat-2"),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "a,b"),
            ("x-app", "cli"),
            ("Content-Type", "application/json"),
        ],
        &body,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["content"][0]["text"], DEFAULT_ANSWER);
    let seen = env.provider().requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.target, "/v1/messages?beta=true");
    assert_eq!(r.body, body);
    assert_eq!(r.count("authorization"), 1);
    assert_eq!(r.header("authorization"), Some(format!("Bearer {}", env.jwt).as_str()));
    assert_eq!(r.count("txn-token"), 1);
    assert_eq!(r.header("txn-token"), Some(env.trat.as_str()));
    assert_eq!(r.count("x-api-key"), 0);
    assert_eq!(r.count("proxy-authorization"), 0);
    for planted in [PLACEHOLDER, "forged", "sk-ant-planted", "Zm9yZ2Vk", "cHJveHk="] {
        assert!(!r.any_header_contains(planted), "{planted} reached the provider");
    }
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("anthropic-beta"), Some("a,b"));
    assert_eq!(r.header("x-app"), Some("cli"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_header_cannot_remove_the_added_tokens() {
    let env = start(Some(ProviderConfig::default())).await;
    let reply = request(
        env.listen,
        "POST",
        "/v1/messages",
        &[
            ("Connection", "txn-token, authorization, x-hop"),
            ("x-hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Upgrade", "h2c"),
            ("TE", "trailers"),
        ],
        &body_json(false),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let r = &env.provider().requests()[0];
    assert_eq!(r.header("txn-token"), Some(env.trat.as_str()));
    assert_eq!(r.header("authorization"), Some(format!("Bearer {}", env.jwt).as_str()));
    for hop in ["x-hop", "keep-alive", "upgrade", "te"] {
        assert_eq!(r.count(hop), 0, "{hop} was forwarded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_query_pass_unchanged() {
    let env = start(Some(ProviderConfig::default())).await;
    let reply = parse_reply(
        &raw(env.listen, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await,
    );
    assert_eq!(reply.status, 200);
    let reply =
        request(env.listen, "POST", "/v1/messages/count_tokens?a=1&b=%2F", &[], &body_json(false))
            .await;
    assert_eq!(reply.status, 200);
    let seen = env.provider().requests();
    assert_eq!((seen[0].method.as_str(), seen[0].target.as_str()), ("HEAD", "/"));
    assert_eq!(seen[1].target, "/v1/messages/count_tokens?a=1&b=%2F");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_requests_are_refused_and_never_forwarded() {
    let env = start(Some(ProviderConfig::default())).await;
    let cases: &[&[u8]] = &[
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded: 2\r\nContent-Length: 0\r\n\r\n",
        b"POST /v1/messages HTTP/1.1\nHost: x\nContent-Length: 0\n\n",
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nX-A: 1\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\nabc",
        b"POST /v1/messages HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        // A valid first request, then a smuggled one on the same connection.
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for case in cases {
        let answer = raw(env.listen, case).await;
        // The last response on the connection: a status line is "HTTP/1.1 " and 3 digits.
        let starts = answer.match_indices("HTTP/1.1 ").map(|(i, _)| i).filter(|&i| {
            answer
                .as_bytes()
                .get(i + 9..i + 13)
                .is_some_and(|s| s[..3].iter().all(u8::is_ascii_digit) && s[3] == b' ')
        });
        let last = starts.last().map_or(&answer[..], |i| &answer[i..]);
        let reply = parse_reply(last);
        assert_eq!(reply.status, 400, "{}\n---\n{answer}", String::from_utf8_lossy(case));
        if reply.header("content-type") == Some("application/json") {
            assert_eq!(reply.json()["type"], "error", "{answer}");
            assert_eq!(reply.header("x-should-retry"), Some("false"));
        }
    }
    // Only the valid GET of the last case reached the provider.
    let seen = env.provider().requests();
    assert!(seen.iter().all(|r| r.method == "GET" && r.target == "/"), "{seen:?}");
    assert_eq!(seen.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_seen_by_the_next_request() {
    let env = start(Some(ProviderConfig::default())).await;
    let send = || request(env.listen, "POST", "/v1/messages", &[], b"{}");
    assert_eq!(send().await.status, 200);
    // Replaced by rename, as the kubelet and SPIRE helpers do.
    let rotated = jwt::expiring_in("spiffe://sage-sanctum.local/scanner/run-1", 7200);
    let tmp = env.dir.path().join("jwt.new");
    std::fs::write(&tmp, &rotated).unwrap();
    std::fs::rename(&tmp, env.jwt_file()).unwrap();
    assert_eq!(send().await.status, 200);
    // Rewritten in place with a token of the same length.
    let trat2 = jwt::unsigned(
        &serde_json::json!({"sub": "spiffe://sage-sanctum.local/scanner/run-1", "txn": "t-2", "exp": 4102444800u64}),
    );
    assert_eq!(trat2.len(), env.trat.len());
    std::fs::write(env.trat_file(), &trat2).unwrap();
    assert_eq!(send().await.status, 200);
    let seen = env.provider().requests();
    assert_eq!(seen[0].header("authorization"), Some(format!("Bearer {}", env.jwt).as_str()));
    assert_eq!(seen[1].header("authorization"), Some(format!("Bearer {rotated}").as_str()));
    assert_eq!(seen[1].header("txn-token"), Some(env.trat.as_str()));
    assert_eq!(seen[2].header("txn-token"), Some(trat2.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_problems_are_503_naming_the_file() {
    let env = start(Some(ProviderConfig::default())).await;
    let expired = jwt::expiring_in("spiffe://sage-sanctum.local/scanner/run-1", -60);
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("jwt", None, "does not exist"),
        ("jwt", Some(String::new()), "is empty"),
        ("jwt", Some("  \n".into()), "is empty"),
        ("jwt", Some(expired.clone()), "expired"),
        ("trat.jwt", Some("not-a-token".into()), "does not hold a JWT"),
        ("trat.jwt", None, "does not exist"),
    ];
    for (file, content, want) in cases {
        let path = env.dir.path().join(file);
        let saved = std::fs::read(&path).ok();
        match &content {
            Some(c) => std::fs::write(&path, c).unwrap(),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        let reply = request(env.listen, "POST", "/v1/messages", &[], &body_json(false)).await;
        assert_eq!(reply.status, 503, "{file} {want}: {}", reply.body);
        assert_eq!(reply.header("retry-after"), Some("2"));
        let message = reply.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains(want), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        for secret in [&env.jwt, &env.trat, &expired] {
            assert!(!reply.body.contains(secret.as_str()), "a token leaked into the error body");
        }
        if let Some(saved) = saved {
            std::fs::write(&path, saved).unwrap();
        }
    }
    // Unreadable: a directory where the file should be (root reads any file, so
    // permissions cannot make one unreadable in this test).
    let saved = std::fs::read(env.jwt_file()).unwrap();
    std::fs::remove_file(env.jwt_file()).unwrap();
    std::fs::create_dir(env.jwt_file()).unwrap();
    let reply = request(env.listen, "POST", "/v1/messages", &[], &body_json(false)).await;
    assert_eq!(reply.status, 503);
    assert!(reply.body.contains("cannot be read"), "{}", reply.body);
    std::fs::remove_dir(env.jwt_file()).unwrap();
    std::fs::write(env.jwt_file(), saved).unwrap();
    assert_eq!(env.provider().served(), 0, "no request may be forwarded without both tokens");
    // And with both files back, requests flow again.
    let reply = request(env.listen, "POST", "/v1/messages", &[], &body_json(false)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_refusing_socket_is_502() {
    let env = start(None).await;
    let reply = request(env.listen, "POST", "/v1/messages", &[], &body_json(false)).await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert_eq!(reply.header("retry-after"), Some("1"));
    let message = reply.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        message.contains("does not exist")
            && message.contains("llm.sock")
            && message.contains("forwarder"),
        "{message}"
    );
    // A socket file nobody listens on (the forwarder crashed).
    drop(std::os::unix::net::UnixListener::bind(env.socket()).unwrap());
    let reply = request(env.listen, "POST", "/v1/messages", &[], &body_json(false)).await;
    assert_eq!(reply.status, 502);
    assert!(
        reply.json()["error"]["message"].as_str().unwrap_or_default().contains("refused"),
        "{}",
        reply.body
    );
    assert!(!reply.body.contains(&env.jwt));
}

/// Reads one SSE answer from a raw connection, noting when each event arrived.
async fn read_events(stream: &mut BufReader<TcpStream>) -> Vec<(Instant, String)> {
    let mut events = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read_line(&mut line))
            .await
            .expect("event timeout")
            .unwrap();
        if n == 0 {
            break;
        }
        if let Some(name) = line.trim_end().strip_prefix("event: ") {
            events.push((Instant::now(), name.to_owned()));
            if name == "message_stop" {
                break;
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_as_they_are_sent() {
    let env = start(Some(ProviderConfig {
        event_delay: Duration::from_millis(150),
        deltas: 4,
        ..ProviderConfig::default()
    }))
    .await;
    let mut stream = BufReader::new(TcpStream::connect(env.listen).await.unwrap());
    let body = body_json(true);
    let head = format!(
        "POST /v1/messages?beta=true HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.get_mut().write_all(head.as_bytes()).await.unwrap();
    stream.get_mut().write_all(&body).await.unwrap();
    let start = Instant::now();
    let events = read_events(&mut stream).await;
    let names: Vec<&str> = events.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert_eq!(names.len(), 10);
    // Events arrive as they are sent (150 ms apart), not all at the end: the first one
    // long before the provider sends the last, and typical gaps of about one delay.
    // (Medians, not every gap, so a scheduling hiccup on a busy machine cannot fail it.)
    let first = events[0].0 - start;
    let last = events[events.len() - 1].0 - start;
    assert!(first < Duration::from_millis(600), "first event after {first:?}");
    assert!(last >= Duration::from_millis(150 * 8), "stream finished after {last:?}");
    let mut gaps: Vec<Duration> = events.windows(2).map(|p| p[1].0 - p[0].0).collect();
    gaps.sort();
    assert!(
        gaps[gaps.len() / 2] >= Duration::from_millis(100),
        "median gap {:?}",
        gaps[gaps.len() / 2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_the_upstream() {
    let env = start(Some(ProviderConfig::default())).await;
    let mut stream = BufReader::new(TcpStream::connect(env.listen).await.unwrap());
    let body = body_json(true);
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-standin-hang: 1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.get_mut().write_all(head.as_bytes()).await.unwrap();
    stream.get_mut().write_all(&body).await.unwrap();
    let mut line = String::new();
    while !line.starts_with("event: message_start") {
        line.clear();
        stream.read_line(&mut line).await.unwrap();
    }
    assert_eq!(env.provider().cancelled(), 0);
    drop(stream);
    assert!(
        env.provider().wait_cancelled(1, Duration::from_secs(5)).await,
        "the upstream stream was not cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_with_every_byte_accounted() {
    let env = start(Some(ProviderConfig::default())).await;
    let listen = env.listen;
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        tasks.push(tokio::spawn(async move {
            // A ~100 KB body unique to this request, so mix-ups would show.
            let filler: String =
                (0..12_000).map(|j| char::from(b'a' + ((i + j) % 26) as u8)).collect::<String>();
            let body =
                serde_json::json!({"model": "m", "stream": true, "max_tokens": 10, "messages": [
                {"role": "user", "content": format!("{i}:{}", filler.repeat(8))}]})
                .to_string()
                .into_bytes();
            let reply = request(
                listen,
                "POST",
                "/v1/messages?beta=true",
                &[("x-request", &i.to_string())],
                &body,
            )
            .await;
            (i, body, reply)
        }));
    }
    let mut sent = std::collections::HashMap::new();
    for task in tasks {
        let (i, body, reply) = task.await.unwrap();
        assert_eq!(reply.status, 200);
        let sse = dechunk(&reply.body);
        let text: String = sse
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .filter_map(|v| v["delta"]["text"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(text, DEFAULT_ANSWER, "stream {i} lost bytes");
        assert!(
            sse.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
            "stream {i} ended early"
        );
        sent.insert(i.to_string(), body);
    }
    let seen = env.provider().requests();
    assert_eq!(seen.len(), 200);
    for r in seen {
        let i = r.header("x-request").expect("x-request");
        assert_eq!(r.body, sent[i], "request body {i} changed on the way");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_stream_before_they_end() {
    // A hand-made upstream that reports when the first body bytes arrive.
    let env = start(None).await;
    let listener = tokio::net::UnixListener::bind(env.socket()).unwrap();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut seen_tx = Some(seen_tx);
        loop {
            let n = conn.read(&mut chunk).await.unwrap();
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if text.contains("first-part")
                && let Some(tx) = seen_tx.take()
            {
                let _ = tx.send(());
            }
            // Answer once the whole chunked body is in, then keep the connection open
            // (closing it under a request would be an upstream failure, not this test).
            if text.contains("last-part") && text.ends_with("0\r\n\r\n") {
                conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
                let _ = conn.read(&mut chunk).await;
                return;
            }
        }
    });
    let mut client = TcpStream::connect(env.listen).await.unwrap();
    client
        .write_all(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\na\r\nfirst-part\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), seen_rx)
        .await
        .expect("the first part was held back")
        .unwrap();
    client.write_all(b"9\r\nlast-part\r\n0\r\n\r\n").await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_health_readiness_metrics() {
    let env = start(Some(ProviderConfig::default())).await;
    let get = |path: &'static str| request(env.admin, "GET", path, &[], b"");
    assert_eq!(get("/healthz").await.status, 200);
    assert_eq!(get("/readyz").await.status, 200);
    request(env.listen, "POST", "/v1/messages", &[], &body_json(false)).await;
    std::fs::remove_file(env.trat_file()).unwrap();
    let not_ready = get("/readyz").await;
    assert_eq!(not_ready.status, 503);
    assert!(
        not_ready.body.contains("trat.jwt") && not_ready.body.contains("does not exist"),
        "{}",
        not_ready.body
    );
    request(env.listen, "POST", "/v1/messages", &[], &body_json(false)).await;
    let metrics = get("/metrics").await.body;
    for want in [
        "sanctum_bridge_requests_total{status=\"200\"} 1",
        "sanctum_bridge_requests_total{status=\"503\"} 1",
        "sanctum_bridge_token_errors_total{file=\"trat\"} 1",
        "sanctum_bridge_in_flight ",
        "sanctum_bridge_response_head_seconds_count 2",
    ] {
        assert!(metrics.contains(want), "missing {want} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_unreachable_is_not_ready() {
    let env = start(None).await;
    let reply = request(env.admin, "GET", "/readyz", &[], b"").await;
    assert_eq!(reply.status, 503);
    assert!(reply.body.contains("llm.sock"), "{}", reply.body);
}

#[test]
fn non_loopback_listen_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sanctum-bridge"))
        .args(["--listen", "0.0.0.0:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--upstream-socket")
        .arg(dir.path().join("s"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("--allow-non-loopback"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_streams_finish_then_exits() {
    let mut env = start(Some(ProviderConfig {
        event_delay: Duration::from_millis(100),
        ..ProviderConfig::default()
    }))
    .await;
    let mut stream = BufReader::new(TcpStream::connect(env.listen).await.unwrap());
    let body = body_json(true);
    let head =
        format!("POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
    stream.get_mut().write_all(head.as_bytes()).await.unwrap();
    stream.get_mut().write_all(&body).await.unwrap();
    let mut line = String::new();
    while !line.starts_with("event: message_start") {
        line.clear();
        stream.read_line(&mut line).await.unwrap();
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &env.bridge.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let events = read_events(&mut stream).await;
    assert_eq!(
        events.last().map(|(_, n)| n.as_str()),
        Some("message_stop"),
        "the stream was cut by shutdown"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = env.bridge.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the bridge did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");
    assert!(TcpStream::connect(env.listen).await.is_err(), "still accepting after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_is_bounded_but_a_long_stream_is_not() {
    let cfg =
        ProviderConfig { event_delay: Duration::from_millis(400), ..ProviderConfig::default() };
    let env = start_with(Some(cfg), &["--body-idle-timeout", "1"]).await;
    let send = |extra: &'static str| {
        let listen = env.listen;
        async move {
            let mut stream = BufReader::new(TcpStream::connect(listen).await.unwrap());
            let body = body_json(true);
            let head = format!(
                "POST /v1/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
                body.len()
            );
            stream.get_mut().write_all(head.as_bytes()).await.unwrap();
            stream.get_mut().write_all(&body).await.unwrap();
            let mut all = String::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut all))
                .await;
            all
        }
    };
    // Ten events 400 ms apart: 3.6 s in total, well past the 1 s idle timeout.
    let start = Instant::now();
    let long = send("").await;
    assert!(start.elapsed() >= Duration::from_millis(3000));
    assert!(long.contains("event: message_stop"), "a long but lively stream was cut: {long}");
    // A stream that goes silent after its first event is ended after about 1 s, and the
    // upstream request is cancelled.
    let start = Instant::now();
    let stalled = send("x-standin-stall: 1\r\n").await;
    let took = start.elapsed();
    assert!(stalled.contains("event: message_start") && !stalled.contains("message_stop"));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "ended after {took:?}"
    );
    assert!(env.provider().wait_cancelled(1, Duration::from_secs(5)).await);
}
