//! `distkv-bench` against a real node: a bounded run reports every operation, no errors
//! and sane latencies; bad targets are refused with one line and the right exit code.

use std::process::{Command, Output, Stdio};

use distkv_tests::{binary, free_port, start_loopback_cluster, stderr, stdout, Server};
use serde_json::Value;

/// Runs `distkv-bench ARGS...` to completion.
fn bench(args: &[&str]) -> Output {
    Command::new(binary("distkv-bench"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run distkv-bench")
}

/// Checks one operation's entry of the JSON report and returns its count.
fn check_op(report: &Value, op: &str) -> u64 {
    let o = &report["operations"][op];
    let count = o["count"].as_u64().unwrap_or_else(|| panic!("{op}: {o}"));
    assert_eq!(o["errors"], 0, "{op}: {o}");
    assert!(o["ops_per_sec"].as_f64().unwrap() > 0.0, "{op}: {o}");
    let l = &o["latency_us"];
    let p = |name: &str| {
        l[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{op} latency {name}: {l}"))
    };
    assert!(p("p50") >= 1, "{op}: {l}");
    assert!(p("p50") <= p("p95"), "{op}: {l}");
    assert!(p("p95") <= p("p99"), "{op}: {l}");
    assert!(p("p99") <= p("p999"), "{op}: {l}");
    assert!(p("p999") <= p("max"), "{op}: {l}");
    // Every request stays under the 30 s safety bound of the run.
    assert!(p("max") < 30_000_000, "{op}: {l}");
    count
}

#[test]
fn workload_a_with_preload_reports_every_operation() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("n1"), &[])?;
    let report_path = dir.path().join("report.json");
    let report_arg = report_path.to_str().expect("utf-8 temp path");
    let o = bench(&[
        "--targets",
        &server.addr,
        "--ops",
        "2000",
        "--duration",
        "120s",
        "--workload",
        "a",
        "--preload",
        "--keys",
        "500",
        "--clients",
        "8",
        "--seed",
        "42",
        "--output",
        "json",
        report_arg,
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert!(stdout(&o).contains("p99 us"), "text report: {}", stdout(&o));
    assert!(stderr(&o).contains("preloaded 500 keys"), "{}", stderr(&o));

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path)?)?;
    assert_eq!(report["total_ops"], 2000, "{report}");
    assert_eq!(report["errors_total"], 0, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    // Every key was preloaded, so no read misses.
    assert_eq!(report["not_found"], 0, "{report}");
    let reads = check_op(&report, "read");
    let updates = check_op(&report, "update");
    assert_eq!(reads + updates, 2000);
    // A 50/50 mix: each side well away from 0 and 2000.
    assert!((700..=1300).contains(&reads), "reads {reads}");
    assert!(report["operations"].get("insert").is_none(), "{report}");
    assert!(report["elapsed_s"].as_f64().unwrap() > 0.0);
    assert_eq!(report["settings"]["workload"], "a");
    Ok(())
}

#[test]
fn insert_workload_writes_new_keys_and_reports_csv() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("n1"), &[])?;
    let csv_path = dir.path().join("report.csv");
    let o = bench(&[
        "--targets",
        &server.addr,
        "--ops",
        "300",
        "--workload",
        "insert",
        "--clients",
        "4",
        "--key-prefix",
        "ins-test",
        "--seed",
        "7",
        "--output",
        "csv",
        csv_path.to_str().expect("utf-8 temp path"),
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let csv = std::fs::read_to_string(&csv_path)?;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(
        lines[0].starts_with("op,count,errors,ops_per_sec,p50_us"),
        "{csv}"
    );
    assert!(lines[1].starts_with("insert,300,0,"), "{csv}");
    // The node now holds exactly the inserted keys, numbered 0..300 under the run id
    // (the seed), each written once: one value, no sibling.
    for n in [0, 150, 299] {
        let key = format!("ins-test:ins:7:{n:010}");
        let got = server.client(&["--json", "get", &key]);
        assert_eq!(got.status.code(), Some(0), "{key}: {}", stderr(&got));
        let doc: Value = serde_json::from_str(stdout(&got).trim())?;
        assert_eq!(doc["values"].as_array().map(Vec::len), Some(1), "{doc}");
    }
    let missing = server.client(&["get", "ins-test:ins:7:0000000300"]);
    assert_eq!(missing.status.code(), Some(1), "{}", stderr(&missing));
    Ok(())
}

#[test]
fn unreachable_remote_and_unbounded_runs_are_refused() {
    let port = free_port();
    let dead = format!("127.0.0.1:{port}");
    let o = bench(&["--targets", &dead, "--ops", "10"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("cannot connect to target {dead}")),
        "{err}"
    );

    let o = bench(&["--targets", "192.0.2.10:7101", "--ops", "10"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not a loopback address"), "{err}");
    assert!(err.contains("--allow-remote"), "{err}");

    let o = bench(&["--targets", &dead]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("unbounded"), "{}", stderr(&o));

    // Usage errors from the argument parser are one line too.
    let o = bench(&["--ops", "10"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--targets"), "{err}");
}

#[test]
fn three_node_cluster_spreads_clients_over_every_target() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let servers = start_loopback_cluster(dir.path(), &[])?;
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.clone()).collect();
    let report_path = dir.path().join("report.json");
    let targets = addrs.join(",");
    let o = bench(&[
        "--targets",
        &targets,
        "--ops",
        "600",
        "--duration",
        "120s",
        "--workload",
        "b",
        "--preload",
        "--keys",
        "200",
        "--distribution",
        "uniform",
        "--consistency",
        "all",
        "--clients",
        "6",
        "--output",
        "json",
        report_path.to_str().expect("utf-8 temp path"),
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    // Every target was contacted and identified itself.
    for (i, addr) in addrs.iter().enumerate() {
        let line = format!("target {addr} is node \"n{i}\" (N=3 R=2 W=2, 3 members");
        assert!(stderr(&o).contains(&line), "{line} in {}", stderr(&o));
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path)?)?;
    assert_eq!(report["total_ops"], 600, "{report}");
    assert_eq!(report["errors_total"], 0, "{report}");
    assert_eq!(report["not_found"], 0, "{report}");
    let reads = check_op(&report, "read");
    let updates = check_op(&report, "update");
    assert_eq!(reads + updates, 600);
    assert!(
        reads > updates,
        "95/5 mix: {reads} reads, {updates} updates"
    );
    assert_eq!(report["settings"]["consistency"], "all");
    // The preload (at CONSISTENCY_ALL) is visible through every node, even at ONE.
    for server in &servers {
        let got = server.client(&["--consistency", "one", "get", "bench:0000000199"]);
        assert_eq!(got.status.code(), Some(0), "{}", stderr(&got));
    }
    Ok(())
}

/// Established TCP connections to `port` on this machine, counted at their client end
/// (from `/proc/net/tcp`; by client address, as a table read while it changes may list
/// a socket twice).
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let remote = format!(":{port:04X}");
    let clients: std::collections::HashSet<&str> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let established = fields.len() > 3 && fields[2].ends_with(&remote) && fields[3] == "01";
            established.then_some(fields[1])
        })
        .collect();
    clients.len()
}

/// Runs `distkv-bench ARGS...` while counting the connections to `port`; returns its
/// output and the most connections seen at once.
fn bench_counting_connections(args: &[&str], port: u16) -> (Output, usize) {
    let mut child = Command::new(binary("distkv-bench"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start distkv-bench");
    let mut most = 0;
    while child.try_wait().expect("poll distkv-bench").is_none() {
        most = most.max(connections_to(port));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child.wait_with_output().expect("distkv-bench output"), most)
}

#[test]
fn connection_per_client_opens_one_connection_for_each_client() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("n1"), &[])?;
    let port: u16 = server.addr.rsplit_once(':').expect("HOST:PORT").1.parse()?;
    let report_path = dir.path().join("report.json");
    let report_arg = report_path.to_str().expect("utf-8 temp path");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--targets",
            &server.addr,
            "--duration",
            "2s",
            "--workload",
            "insert",
            "--clients",
            "6",
            "--output",
            "json",
            report_arg,
        ];
        args.extend_from_slice(extra);
        bench_counting_connections(&args, port)
    };

    let (o, most) = run(&["--connection-per-client"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert!(
        stderr(&o).contains("6 connection(s) to it"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        most, 6,
        "the node saw {most} connections at most, not one per client"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path)?)?;
    assert_eq!(report["errors_total"], 0, "{report}");
    assert!(check_op(&report, "insert") > 0);
    assert_eq!(
        report["settings"]["connection_per_client"], true,
        "{report}"
    );
    assert_eq!(
        report["settings"]["connections_per_target"],
        serde_json::json!([6]),
        "{report}"
    );

    // The default: the six clients share one connection.
    let (o, most) = run(&[]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert!(
        stderr(&o).contains("1 connection(s) to it"),
        "{}",
        stderr(&o)
    );
    assert_eq!(most, 1, "the node saw {most} connections at most");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report_path)?)?;
    assert_eq!(
        report["settings"]["connection_per_client"], false,
        "{report}"
    );
    Ok(())
}
