//! `distkv-server` start-up: configuration layering and every refusal to start.

use distkv_tests::{free_port, server_output, stderr, stdout, Server};

#[test]
fn print_config_shows_file_env_and_flag_layers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("node.toml"),
        "node_id = \"file-node\"\nseed_nodes = [\"n2=127.0.0.1:7002\"]\n[replication]\nreplicas = 3\nread_quorum = 2\nwrite_quorum = 2\nvirtual_nodes = 64\n",
    )?;
    let o = server_output(
        &[
            "--config",
            "node.toml",
            "--virtual-nodes",
            "32",
            "--print-config",
        ],
        &[
            ("DISTKV_REPLICATION__VIRTUAL_NODES", "48"),
            ("DISTKV_NODE_ID", "env-node"),
            ("DISTKV_LOG__FORMAT", "json"),
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let printed: toml::Value = toml::from_str(&stdout(&o))?;
    assert_eq!(
        printed["node_id"].as_str(),
        Some("env-node"),
        "env beats file"
    );
    assert_eq!(
        printed["replication"]["virtual_nodes"].as_integer(),
        Some(32),
        "flag beats env"
    );
    assert_eq!(
        printed["replication"]["replicas"].as_integer(),
        Some(3),
        "file beats default"
    );
    assert_eq!(
        printed["address"].as_str(),
        Some("127.0.0.1:8080"),
        "default"
    );
    assert_eq!(printed["log"]["format"].as_str(), Some("json"));
    assert_eq!(printed["seed_nodes"][0].as_str(), Some("n2=127.0.0.1:7002"));
    Ok(())
}

/// Each refusal exits non-zero, before listening, with one line naming the setting and
/// where it came from.
#[test]
fn invalid_settings_stop_the_node_before_it_listens() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("bad.toml"),
        "[storage]\nengine = \"rocksdb\"\n",
    )?;
    std::fs::write(dir.path().join("file-in-the-way"), "x")?;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            vec!["--replicas", "3", "--read-quorum", "4"],
            vec![],
            vec![
                "replication.read_quorum = 4",
                "command-line flag --read-quorum",
            ],
        ),
        (
            vec!["--replicas", "2"],
            vec![("DISTKV_REPLICATION__WRITE_QUORUM", "3")],
            vec![
                "replication.write_quorum = 3",
                "environment variable DISTKV_REPLICATION__WRITE_QUORUM",
            ],
        ),
        (
            vec!["--replicas", "0"],
            vec![],
            vec!["replication.replicas = 0", "must be at least 1"],
        ),
        (
            vec!["--config", "bad.toml"],
            vec![],
            vec!["storage.engine", "bad.toml", "rocksdb"],
        ),
        (
            vec![],
            vec![("DISTKV_STORAGE__ENGINE", "cassandra")],
            vec!["storage.engine", "DISTKV_STORAGE__ENGINE", "cassandra"],
        ),
        (
            vec!["--address", "localhost:notaport"],
            vec![],
            vec![
                "address = localhost:notaport",
                "command-line flag --address",
            ],
        ),
        (
            vec!["--data-dir", "file-in-the-way/data"],
            vec![],
            vec![
                "data_dir = file-in-the-way/data",
                "command-line flag --data-dir",
            ],
        ),
        (
            vec!["--config", "nope.toml"],
            vec![],
            vec!["nope.toml does not exist"],
        ),
        (
            vec!["--seed-nodes", "127.0.0.1"],
            vec![],
            vec!["seed_nodes", "no port"],
        ),
        (
            vec![],
            vec![("DISTKV_LOG__LEVEL", "loud")],
            vec![
                "log.level = \"loud\"",
                "environment variable DISTKV_LOG__LEVEL",
            ],
        ),
    ];
    for (args, envs, expected) in cases {
        let mut full = vec!["--address", addr.as_str()];
        // The address case overrides the one above (flags: last wins).
        full.extend(args.iter().copied());
        let o = server_output(&full, &envs, dir.path());
        let err = stderr(&o);
        assert!(!o.status.success(), "{args:?} {envs:?} should not start");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: one line, got: {err}"
        );
        for e in expected {
            assert!(err.contains(e), "{args:?} {envs:?}: {err:?} lacks {e:?}");
        }
        assert!(
            std::net::TcpStream::connect(&addr).is_err(),
            "{args:?}: nothing listens"
        );
    }
    Ok(())
}

#[test]
fn a_busy_port_is_a_clear_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let first = Server::start(&dir.path().join("n1"), &[])?;
    let o = server_output(
        &["--address", &first.addr, "--data-dir", "n2"],
        &[],
        dir.path(),
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&format!("cannot listen on {}", first.addr)),
        "{err}"
    );
    Ok(())
}

#[test]
fn no_flags_runs_a_node_on_8080_with_data_in_the_current_directory() -> anyhow::Result<()> {
    // Only when 8080 is free on this machine; otherwise the default cannot be shown here.
    if std::net::TcpListener::bind("127.0.0.1:8080").is_err() {
        eprintln!("skipping: 127.0.0.1:8080 is in use");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut cmd = std::process::Command::new(distkv_tests::binary("distkv-server"));
    let mut child = cmd
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut answered = false;
    for _ in 0..400 {
        let o = distkv_tests::run_client("127.0.0.1:8080", &["put", "k", "v"], None);
        if o.status.success() {
            answered = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let _ = distkv_tests::send_signal(child.id(), "TERM");
    let status = child.wait()?;
    assert!(
        answered,
        "the default node did not answer on 127.0.0.1:8080"
    );
    assert!(status.success(), "SIGTERM exits 0");
    assert!(dir.path().join("data").is_dir(), "data lives in ./data");
    Ok(())
}

/// The configuration reference in README.md is a valid configuration.
#[test]
fn the_readme_config_example_loads() -> anyhow::Result<()> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
    let start = readme
        .find("```toml\n")
        .expect("README has a ```toml block")
        + "```toml\n".len();
    let len = readme[start..].find("```").expect("the toml block ends");
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("readme.toml"), &readme[start..start + len])?;
    let o = server_output(
        &["--config", "readme.toml", "--print-config"],
        &[],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let printed: toml::Value = toml::from_str(&stdout(&o))?;
    assert_eq!(printed["node_id"].as_str(), Some("node-1"));
    assert_eq!(
        printed["replication"]["virtual_nodes"].as_integer(),
        Some(150)
    );
    assert_eq!(printed["storage"]["engine"].as_str(), Some("lsm"));
    assert_eq!(
        printed["storage"]["lsm"]["compaction"].as_str(),
        Some("leveled")
    );
    Ok(())
}

/// `log.format = "json"` makes every log line a JSON object with structured fields.
#[test]
fn json_logs_are_one_object_per_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = Server::start_with_env(
        &dir.path().join("n1"),
        &[],
        &[("DISTKV_LOG__FORMAT", "json")],
    )?;
    server.signal("TERM")?;
    let log = server.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "start and stop are logged: {log}");
    let mut saw_listening = false;
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{e}: {line}"))?;
        if v["fields"]["message"] == "distkv node listening" {
            saw_listening = true;
            assert_eq!(v["fields"]["address"], server.addr.as_str());
            assert_eq!(v["level"], "INFO");
        }
    }
    assert!(saw_listening, "{log}");
    Ok(())
}

/// The compaction strategy is chosen per deployment and can change on an existing data
/// directory: data written under one strategy is served under the next.
#[test]
fn the_compaction_strategy_can_change_between_restarts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("n1");
    let mut written = Vec::new();
    for (round, strategy) in ["leveled", "size-tiered", "simple", "leveled"]
        .iter()
        .enumerate()
    {
        let env = [
            ("DISTKV_STORAGE__LSM__COMPACTION", *strategy),
            ("DISTKV_STORAGE__LSM__MEMTABLE_SIZE_BYTES", "65536"),
        ];
        let mut server = Server::start_with_env(&data, &[], &env)?;
        let mut pairs = Vec::new();
        for i in 0..200 {
            pairs.push(format!("r{round}-k{i}"));
            pairs.push(format!("{strategy}-{i}-{}", "x".repeat(200)));
        }
        let args: Vec<&str> = std::iter::once("batch")
            .chain(pairs.iter().map(String::as_str))
            .collect();
        let o = server.client(&args);
        assert!(o.status.success(), "{strategy}: {}", stderr(&o));
        written.extend(pairs.chunks(2).map(|p| (p[0].clone(), p[1].clone())));
        for (k, v) in written.iter().step_by(37) {
            assert_eq!(
                stdout(&server.client(&["get", k])),
                format!("{v}\n"),
                "{strategy}: {k}"
            );
        }
        assert!(server.signal("TERM")?.success());
    }
    Ok(())
}

/// Two processes given the same members (in any order, each seeing itself as a different
/// node) build the same ring, and that ring is the one every earlier version built.
#[test]
fn two_processes_compute_identical_rings() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let a = server_output(
        &[
            "--node-id",
            "a",
            "--address",
            "127.0.0.1:7001",
            "--seed-nodes",
            "a=127.0.0.1:8001,b=127.0.0.1:8002,c=127.0.0.1:8003",
            "--print-ring",
        ],
        &[],
        dir.path(),
    );
    let c = server_output(
        &[
            "--node-id",
            "c",
            "--address",
            "127.0.0.1:7003",
            "--seed-nodes",
            "b=127.0.0.1:8002,a=127.0.0.1:8001",
            "--print-ring",
        ],
        &[],
        dir.path(),
    );
    assert!(
        a.status.success() && c.status.success(),
        "{} {}",
        stderr(&a),
        stderr(&c)
    );
    assert_eq!(stdout(&a), stdout(&c));
    assert_eq!(stdout(&a).lines().count(), 4, "{}", stdout(&a));
    // Placement is shared state: if this changes, every existing cluster's data moves.
    assert!(
        stdout(&a).contains("fingerprint 21c37bc168935095"),
        "{}",
        stdout(&a)
    );
    Ok(())
}

/// A second node on a data directory that a running node holds is refused at start-up.
#[test]
fn a_data_directory_serves_one_node_at_a_time() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("shared");
    let mut first = Server::start(&data, &[])?;
    let port = distkv_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    let peer = format!("127.0.0.1:{}", distkv_tests::free_port());
    let o = server_output(
        &[
            "--address",
            &addr,
            "--peer-address",
            &peer,
            "--data-dir",
            data.to_str().expect("UTF-8"),
        ],
        &[],
        dir.path(),
    );
    assert!(
        !o.status.success(),
        "a second node on the same data directory must not start"
    );
    let err = stderr(&o);
    assert!(err.contains("is in use by another distkv-server"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // The lock dies with the process, even with kill -9.
    first.signal("KILL")?;
    first.restart()?;
    Ok(())
}

/// A data directory written before the token-ordered key layout (format 1: data, no
/// FORMAT file) is refused with one line that says what to do, and is left untouched.
#[test]
fn a_data_directory_of_another_format_is_refused_with_one_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("old");
    std::fs::create_dir_all(data.join("lsm"))?;
    std::fs::write(
        data.join("lsm").join("MANIFEST-000001"),
        b"written by format 1",
    )?;
    let addr = format!("127.0.0.1:{}", distkv_tests::free_port());
    let peer = format!("127.0.0.1:{}", distkv_tests::free_port());
    let o = server_output(
        &[
            "--address",
            &addr,
            "--peer-address",
            &peer,
            "--data-dir",
            data.to_str().expect("UTF-8"),
        ],
        &[],
        dir.path(),
    );
    assert!(
        !o.status.success(),
        "an old data directory must not be opened"
    );
    let err = stderr(&o);
    assert!(err.contains("holds data in format 1"), "{err}");
    assert!(
        err.contains("start this node with an empty --data-dir"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        !data.join("FORMAT").exists(),
        "the old directory is left as it was"
    );
    assert_eq!(
        std::fs::read(data.join("lsm").join("MANIFEST-000001"))?,
        b"written by format 1"
    );
    Ok(())
}

/// A `DISTKV_*` variable that names no setting is a warning, not a refusal: shells carry
/// such variables. `DISTKV_CONFIG` names the config file and is no warning.
#[test]
fn an_unknown_distkv_variable_is_a_warning_and_the_node_serves() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = Server::start_with_env(
        &dir.path().join("n1"),
        &[],
        &[("DISTKV_NOT_A_SETTING", "1")],
    )?;
    let o = server.client(&["put", "k", "v"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&server.client(&["get", "k"])), "v\n");
    server.signal("TERM")?;
    let log = server.log_text();
    assert!(
        log.contains(
            "distkv-server: warning: environment variable DISTKV_NOT_A_SETTING names no setting (ignored)"
        ),
        "{log}"
    );

    std::fs::write(dir.path().join("node.toml"), "node_id = \"from-file\"\n")?;
    let o = server_output(
        &["--print-config"],
        &[("DISTKV_CONFIG", "node.toml")],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "", "DISTKV_CONFIG is no warning");
    assert!(
        stdout(&o).contains("node_id = \"from-file\""),
        "{}",
        stdout(&o)
    );
    Ok(())
}

/// `--print-config` shows the values the node derives when they are not set.
#[test]
fn print_config_shows_the_defaulted_node_id_and_advertise_address() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let o = server_output(
        &["--address", "127.0.0.1:7010", "--print-config"],
        &[],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let printed: toml::Value = toml::from_str(&stdout(&o))?;
    // The node id defaults to the peer advertise address: the client port + 1000.
    assert_eq!(printed["node_id"].as_str(), Some("127.0.0.1:8010"));
    assert_eq!(printed["peer_address"].as_str(), Some("127.0.0.1:8010"));
    assert_eq!(
        printed["advertise_address"].as_str(),
        Some("127.0.0.1:7010")
    );
    Ok(())
}

/// Runs a node with stderr on a pipe until it serves, stops it, and returns its stderr.
fn stderr_of_a_node_on_a_pipe(envs: &[(&str, &str)]) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let addr = format!("127.0.0.1:{}", free_port());
    let peer = format!("127.0.0.1:{}", free_port());
    let mut cmd = std::process::Command::new(distkv_tests::binary("distkv-server"));
    cmd.args([
        "--address",
        &addr,
        "--peer-address",
        &peer,
        "--data-dir",
        "n1",
    ])
    .current_dir(dir.path())
    .env_remove("RUST_LOG")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd.spawn()?;
    // Serving a request, not just listening: by then the node watches SIGTERM.
    let started = std::time::Instant::now();
    while !distkv_tests::run_client(&addr, &["put", "k", "v"], None)
        .status
        .success()
    {
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the node did not serve on {addr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    distkv_tests::send_signal(child.id(), "TERM")?;
    let o = child.wait_with_output()?;
    assert!(o.status.success(), "SIGTERM exits 0: {}", stderr(&o));
    Ok(stderr(&o))
}

/// Text logs are coloured only on a terminal: on a pipe they carry no ANSI escapes.
#[test]
fn text_logs_on_a_pipe_have_no_colour_codes() -> anyhow::Result<()> {
    let log = stderr_of_a_node_on_a_pipe(&[])?;
    assert!(log.contains("distkv node listening"), "{log}");
    assert!(!log.contains("\x1b["), "ANSI escape in: {log:?}");
    Ok(())
}

/// An unusable `RUST_LOG` is reported and ignored (the configured level applies), rather
/// than silently turning off the node's logs.
#[test]
fn an_invalid_rust_log_is_a_warning_and_the_configured_level_applies() -> anyhow::Result<()> {
    let log = stderr_of_a_node_on_a_pipe(&[("RUST_LOG", "loud")])?;
    assert!(
        log.contains("distkv-server: warning: RUST_LOG = \"loud\" is ignored"),
        "{log}"
    );
    assert!(log.contains("distkv node listening"), "{log}");
    Ok(())
}
