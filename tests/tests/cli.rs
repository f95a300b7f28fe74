//! `distkv-client` against a real node: output, exit codes and error lines.

use distkv_tests::{free_port, run_client, stderr, stdout, Server};

#[test]
fn tour_of_the_cli() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("n1"), &[])?;

    let o = server.client(&["put", "greeting", "hello world"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "", "put prints nothing");

    let o = server.client(&["get", "greeting"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "hello world\n");

    // Without --context, put replaces what is there (no sibling).
    assert!(server.client(&["put", "greeting", "hi"]).status.success());
    assert_eq!(stdout(&server.client(&["get", "greeting"])), "hi\n");

    // A blind put makes a sibling; get prints one value per line.
    assert!(server
        .client(&["put", "--blind", "greeting", "hey"])
        .status
        .success());
    let o = server.client(&["get", "greeting"]);
    let text = stdout(&o);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(lines, vec!["hey", "hi"]);

    // --json gives the context; a put with it resolves the siblings.
    let o = server.client(&["--json", "get", "greeting"]);
    let doc: serde_json::Value = serde_json::from_str(stdout(&o).trim())?;
    assert_eq!(doc["key"], "greeting");
    assert_eq!(doc["values"].as_array().map(Vec::len), Some(2));
    let context = doc["context"]
        .as_str()
        .expect("context is a string")
        .to_string();
    assert!(server
        .client(&["put", "greeting", "resolved", "--context", &context])
        .status
        .success());
    assert_eq!(stdout(&server.client(&["get", "greeting"])), "resolved\n");

    // Non-UTF-8 values come back as base64 in JSON.
    let o = server.client_with_stdin(&["put", "bin", "-"], b"\xff\x00\xfe");
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value =
        serde_json::from_str(stdout(&server.client(&["--json", "get", "bin"])).trim())?;
    assert_eq!(doc["values"][0]["base64"], "/wD+");

    // delete, then get: not found, exit 1.
    assert!(server.client(&["delete", "greeting"]).status.success());
    let o = server.client(&["get", "greeting"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).trim(), "not found");
    assert_eq!(stdout(&o), "");

    // batch, with consistency.
    let o = server.client(&["--consistency", "all", "batch", "a", "1", "b", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&server.client(&["--consistency", "one", "get", "b"])),
        "2\n"
    );
    let o = server.client(&["batch", "a", "1", "b"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("KEY VALUE pairs"), "{}", stderr(&o));

    // status shows the node and the engine.
    let o = server.client(&["status"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains(&server.peer_addr), "{}", stdout(&o));
    assert!(stdout(&o).contains("storage   lsm"), "{}", stdout(&o));
    for stat in [
        "level.0.files",
        "write_amplification",
        "block_cache.hit_rate",
        "memtable.bytes",
    ] {
        assert!(
            stdout(&o).contains(stat),
            "status shows the engine's {stat}: {}",
            stdout(&o)
        );
    }
    // ... and the operator's summary: requests and errors, memory, cache, compactions,
    // SSTables per level.
    for line in [
        "requests  ",
        " reads (",
        " writes (",
        "memory    resident ",
        "block cache hit rate",
        "compactions, ",
        "sstables  L0 ",
    ] {
        assert!(
            stdout(&o).contains(line),
            "status shows {line:?}: {}",
            stdout(&o)
        );
    }
    let doc: serde_json::Value =
        serde_json::from_str(stdout(&server.client(&["--json", "status"])).trim())?;
    assert_eq!(doc["members"].as_array().map(Vec::len), Some(1));
    assert!(doc["requests"]["writes"].as_u64().unwrap() >= 3, "{doc}");
    assert!(doc["requests"]["read_errors"].as_u64().is_some(), "{doc}");
    assert!(
        doc["memory"]["resident_bytes"].as_u64().unwrap() > 1 << 20,
        "{doc}"
    );
    assert!(doc["block_cache_hit_rate"].as_f64().is_some(), "{doc}");
    assert!(doc["compactions"].as_u64().is_some(), "{doc}");
    assert_eq!(doc["sstables_per_level"][0]["level"], 0, "{doc}");
    Ok(())
}

#[test]
fn errors_are_one_line_and_nonzero() -> anyhow::Result<()> {
    // Nothing listens on this port.
    let addr = format!("127.0.0.1:{}", free_port());
    let o = run_client(&addr, &["get", "k"], None);
    assert_eq!(o.status.code(), Some(3));
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains(&format!("cannot connect to {addr}")), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );

    let dir = tempfile::tempdir()?;
    let server = Server::start(&dir.path().join("n1"), &[])?;
    let o = server.client(&["put", "", "v"]);
    assert_eq!(o.status.code(), Some(4));
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("key is empty"), "{err}");

    let o = server.client(&["put", "k", "v", "--context", "%%%"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--context is not base64"),
        "{}",
        stderr(&o)
    );

    let o = server.client(&["--timeout", "soon", "get", "k"]);
    assert_eq!(o.status.code(), Some(2), "clap usage error");
    Ok(())
}
