//! A real `distkv-server` on a storage plugin: the persistent example plugin serves the
//! API and keeps its data across restarts; a bad plugin stops the node at start-up with
//! one line naming the file and the problem.

use distkv_tests::{plugin_library, server_output, stderr, stdout, Server};

#[test]
fn a_node_on_the_redb_plugin_serves_and_keeps_its_data() -> anyhow::Result<()> {
    let library = plugin_library("distkv-example-redb");
    let library = library.to_str().expect("UTF-8 path");
    let dir = tempfile::tempdir()?;
    let env = [
        ("DISTKV_STORAGE__ENGINE", "plugin"),
        ("DISTKV_STORAGE__PLUGIN__PATH", library),
    ];
    let mut server = Server::start_with_env(&dir.path().join("n1"), &[], &env)?;

    assert!(server.client(&["put", "alpha", "1"]).status.success());
    assert!(server
        .client(&["batch", "beta", "2", "gamma", "3", "delta", "4"])
        .status
        .success());
    assert!(server.client(&["delete", "delta"]).status.success());
    assert_eq!(stdout(&server.client(&["get", "alpha"])), "1\n");
    assert_eq!(server.client(&["get", "delta"]).status.code(), Some(1));
    let status = stdout(&server.client(&["status"]));
    assert!(
        status.contains("plugin:"),
        "status names the plugin engine: {status}"
    );

    let exit = server.signal("TERM")?;
    assert!(exit.success(), "graceful stop exits 0");
    server.restart()?;
    assert_eq!(stdout(&server.client(&["get", "gamma"])), "3\n");
    assert_eq!(
        server.client(&["get", "delta"]).status.code(),
        Some(1),
        "the delete survived"
    );

    assert!(server.client(&["put", "epsilon", "5"]).status.success());
    server.signal("KILL")?;
    server.restart()?;
    assert_eq!(
        stdout(&server.client(&["get", "epsilon"])),
        "5\n",
        "acknowledged before kill -9"
    );
    assert_eq!(stdout(&server.client(&["get", "alpha"])), "1\n");
    Ok(())
}

#[test]
fn a_bad_plugin_stops_the_node_with_one_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let text_file = dir.path().join("not-a-library.so");
    std::fs::write(&text_file, "this is text, not a shared library")?;
    let missing = dir.path().join("missing.so");
    let redb = plugin_library("distkv-example-redb");
    let cases = [
        (
            missing.clone(),
            "",
            vec!["storage.plugin.path", "missing.so", "no such file"],
        ),
        (
            text_file.clone(),
            "",
            vec!["not-a-library.so", "not a loadable shared library"],
        ),
        (
            plugin_library("distkv-test-plugin-not-a-plugin"),
            "",
            vec!["not a DistKV storage plugin"],
        ),
        (
            plugin_library("distkv-test-plugin-missing-entry"),
            "",
            vec!["missing symbol"],
        ),
        (
            plugin_library("distkv-test-plugin-abi-mismatch"),
            "",
            vec!["ABI version"],
        ),
        (
            redb.clone(),
            "{ cache = 5 }",
            vec!["failed to open", "unknown option \"cache\""],
        ),
    ];
    for (path, options, expected) in cases {
        let path_str = path.to_str().expect("UTF-8 path");
        let mut envs = vec![
            ("DISTKV_STORAGE__ENGINE", "plugin"),
            ("DISTKV_STORAGE__PLUGIN__PATH", path_str),
        ];
        if !options.is_empty() {
            envs.push(("DISTKV_STORAGE__PLUGIN__OPTIONS", options));
        }
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
                "data",
            ],
            &envs,
            dir.path(),
        );
        let err = stderr(&o);
        assert!(!o.status.success(), "{path:?} must not start");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{path:?}: one line, got {err}"
        );
        let file_name = path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default();
        assert!(err.contains(file_name), "{err} names {file_name}");
        for e in expected {
            assert!(err.contains(e), "{path:?}: {err:?} lacks {e:?}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }
    Ok(())
}
