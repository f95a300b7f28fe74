//! The admin HTTP port of real `distkv-server` processes: `/health/live`,
//! `/health/ready` (200, and 503 with a JSON reason when too few members are alive),
//! `/metrics` in Prometheus text format with the request, engine, peer and process
//! figures, and the port turned off with an empty `--admin-address`.

use std::time::{Duration, Instant};

use distkv_tests::{free_port, http_get, start_loopback_cluster, stderr, Server};

/// The value of the first sample of `metrics` whose line starts with `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_node_serves_health_and_metrics_on_its_admin_port() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("d"), &[]).unwrap();

    let (code, body) = http_get(&server.admin, "/health/live").unwrap();
    assert_eq!((code, body.as_str()), (200, r#"{"live":true}"#));
    let (code, body) = http_get(&server.admin, "/health/ready").unwrap();
    assert_eq!(code, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["alive"], 1);

    for i in 0..5 {
        let out = server.client(&["put", "--blind", &format!("k{i}"), "v"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert!(server.client(&["get", "k1"]).status.success());
    assert_eq!(server.client(&["get", ""]).status.code(), Some(4));

    let (code, metrics) = http_get(&server.admin, "/metrics").unwrap();
    assert_eq!(code, 200);
    let put_ok = r#"distkv_client_requests_total{op="put",consistency="default",outcome="ok"}"#;
    assert_eq!(sample(&metrics, put_ok), Some(5.0), "{metrics}");
    let bad_get = r#"distkv_client_requests_total{op="get",consistency="default",outcome="invalid_argument"}"#;
    assert_eq!(sample(&metrics, bad_get), Some(1.0));
    let put_latency =
        r#"distkv_client_request_duration_seconds_count{op="put",consistency="default"}"#;
    assert_eq!(sample(&metrics, put_latency), Some(5.0));
    assert!(sample(&metrics, "distkv_engine_writes_total").unwrap() >= 5.0);
    assert!(sample(&metrics, "distkv_process_resident_memory_bytes").unwrap() > 1e6);
    assert!(sample(&metrics, "distkv_process_open_fds").unwrap() >= 3.0);
    assert_eq!(sample(&metrics, "distkv_node_ready"), Some(1.0));
    for name in [
        "distkv_engine_level_files{level=\"0\"}",
        "distkv_engine_block_cache_hit_ratio",
        "distkv_engine_compactions_total",
        "distkv_engine_write_stalls_total",
        "distkv_engine_write_amplification_ratio",
        "distkv_quorum_failures_total{op=\"write\",cause=\"timeout\"}",
        "distkv_read_repairs_total{outcome=\"repaired\"}",
        "distkv_hints_stored_total",
        "distkv_coordinator_fanout_replicas_count{op=\"write\"}",
        "distkv_build_info{",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    let (code, _) = http_get(&server.admin, "/nothing-here").unwrap();
    assert_eq!(code, 404);
}

#[test]
fn an_empty_admin_address_turns_the_port_off() {
    let dir = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    // The flag wins over the harness's DISTKV_ADMIN_ADDRESS.
    let server = Server::start_with_env(
        &dir.path().join("d"),
        &["--admin-address", ""],
        &[("DISTKV_ADMIN_ADDRESS", &admin)],
    )
    .unwrap();
    assert!(http_get(&server.admin, "/health/live").is_err());
    assert!(http_get(&admin, "/health/live").is_err());
    assert!(server.client(&["put", "k", "v"]).status.success());
}

#[test]
fn readiness_fails_with_a_reason_when_too_few_members_are_alive() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_loopback_cluster(dir.path(), &[]).unwrap();
    // Every node becomes ready once it has heard from its peers.
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in &nodes {
        loop {
            let (code, body) = http_get(&n.admin, "/health/ready").unwrap();
            if code == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "not ready in time: {body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let out = nodes[0].client(&["put", "k", "v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The put is answered once W = 2 replicas hold it; the call to the third may still be
    // in flight, so its numbers may come a moment later (bounded wait).
    let merged_by_n1 = r#"distkv_peer_calls_total{peer="n1",call="merge",outcome="ok"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (_, metrics) = http_get(&nodes[0].admin, "/metrics").unwrap();
        if sample(&metrics, merged_by_n1).is_some() || Instant::now() >= deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        sample(&metrics, r#"distkv_peer_liveness{peer="n1",state="alive"}"#),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, merged_by_n1).is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert!(metrics.contains(r#"distkv_peer_call_duration_seconds_bucket{peer="n1",call="merge""#));

    // Two of three down: R = W = 2 cannot be met, so the survivor is not ready.
    nodes[1].signal("KILL").unwrap();
    nodes[2].signal("KILL").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (code, body) = http_get(&nodes[0].admin, "/health/ready").unwrap();
        if code == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "still ready: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["ready"], false);
    assert!(
        doc["reason"]
            .as_str()
            .unwrap()
            .contains("only 1 live members"),
        "{body}"
    );
    let (code, _) = http_get(&nodes[0].admin, "/health/live").unwrap();
    assert_eq!(code, 200, "a node without quorum is still alive");
    // The failed write is counted with its cause.
    let out = nodes[0].client(&["--timeout", "10s", "put", "--blind", "k2", "v"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let (_, metrics) = http_get(&nodes[0].admin, "/metrics").unwrap();
    let failures: f64 = ["timeout", "replica_errors"]
        .iter()
        .filter_map(|c| {
            sample(
                &metrics,
                &format!(r#"distkv_quorum_failures_total{{op="write",cause="{c}"}}"#),
            )
        })
        .sum();
    assert!(failures >= 1.0, "{metrics}");
    assert_eq!(sample(&metrics, "distkv_node_ready"), Some(0.0));
    let dead = sample(&metrics, r#"distkv_peer_liveness{peer="n1",state="dead"}"#);
    let suspect = sample(
        &metrics,
        r#"distkv_peer_liveness{peer="n1",state="suspect"}"#,
    );
    assert_eq!(dead.unwrap() + suspect.unwrap(), 1.0, "{metrics}");
}
