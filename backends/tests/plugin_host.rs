//! The plugin host refuses every kind of bad plugin with one line naming the file and the
//! problem, and turns a panic inside a plugin into an error.

use std::path::Path;

use distkv_backends::{PluginEngine, PluginError};
use distkv_engine::{Error, KeyRange, StorageEngine, WriteBatch};

/// Loads and expects a failure; checks that its message is one line naming the file.
fn load_error(path: &Path, options: &str) -> PluginError {
    let error = match PluginEngine::load(path, options) {
        Ok(engine) => panic!("loading {} should fail, got {engine:?}", path.display()),
        Err(e) => e,
    };
    let message = error.to_string();
    assert!(
        !message.contains('\n'),
        "the message must be one line: {message:?}"
    );
    assert!(
        message.contains(&path.display().to_string()),
        "the message must name the file: {message}"
    );
    error
}

#[test]
fn missing_file_is_not_found() {
    let path = Path::new("/nonexistent/dir/libnothing.so");
    let e = load_error(path, "{}");
    assert!(matches!(e, PluginError::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("file not found"), "{e}");
    assert!(e.to_string().contains("storage.plugin.path"), "{e}");
}

#[test]
fn file_that_is_not_a_shared_library_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libfake.so");
    std::fs::write(&path, b"this is text, not ELF\n").unwrap();
    let e = load_error(&path, "{}");
    assert!(matches!(e, PluginError::NotALibrary { .. }), "{e:?}");
    assert!(
        e.to_string().contains("not a loadable shared library"),
        "{e}"
    );
    let e = load_error(dir.path(), "{}");
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

#[test]
fn library_without_plugin_symbols_is_not_a_plugin() {
    let path = distkv_tests::plugin_library("distkv-test-plugin-not-a-plugin");
    let e = load_error(&path, "{}");
    assert!(matches!(e, PluginError::NotAPlugin { .. }), "{e:?}");
    assert!(e.to_string().contains("not a DistKV storage plugin"), "{e}");
}

#[test]
fn missing_entry_symbol_is_named() {
    let path = distkv_tests::plugin_library("distkv-test-plugin-missing-entry");
    let e = load_error(&path, "{}");
    assert!(
        matches!(
            e,
            PluginError::MissingSymbol {
                symbol: "distkv_plugin_entry",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("missing symbol distkv_plugin_entry"),
        "{e}"
    );
}

#[test]
fn abi_version_mismatch_names_both_versions() {
    let path = distkv_tests::plugin_library("distkv-test-plugin-abi-mismatch");
    let e = load_error(&path, "{}");
    let (found, expected) = (
        distkv_plugin_api::ABI_VERSION + 1,
        distkv_plugin_api::ABI_VERSION,
    );
    assert!(
        matches!(e, PluginError::AbiMismatch { found: f, expected: x, .. } if f == found && x == expected),
        "{e:?}"
    );
    let message = e.to_string();
    assert!(
        message.contains(&format!(
            "ABI version {found}, but this node speaks version {expected}"
        )),
        "{message}"
    );
}

#[test]
fn null_table_entry_is_named() {
    let path = distkv_tests::plugin_library("distkv-test-plugin-incomplete-table");
    let e = load_error(&path, "{}");
    assert!(matches!(e, PluginError::InvalidTable { .. }), "{e:?}");
    assert!(e.to_string().contains("entry scan is null"), "{e}");
}

#[test]
fn options_must_be_a_json_object() {
    let path = distkv_tests::plugin_library("distkv-example-memory");
    for bad in ["", "[1, 2]", "{\"unterminated\": ", "\"text\""] {
        let e = load_error(&path, bad);
        assert!(
            matches!(e, PluginError::InvalidOptions { .. }),
            "options {bad:?}: {e:?}"
        );
        assert!(
            e.to_string().contains("options are not a JSON object"),
            "{e}"
        );
    }
}

#[test]
fn error_from_the_plugins_open_is_reported() {
    let path = distkv_tests::plugin_library("distkv-example-memory");
    let e = load_error(&path, r#"{"colour": "blue"}"#);
    assert!(
        matches!(e, PluginError::Open { ref name, .. } if name == "example-memory"),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("failed to open: unknown option \"colour\""),
        "{e}"
    );
}

#[test]
fn panic_in_open_becomes_an_open_error() {
    let path = distkv_tests::plugin_library("distkv-example-memory");
    let e = load_error(&path, r#"{"panic_on": "open"}"#);
    assert!(matches!(e, PluginError::Open { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("panicked: example-memory: injected panic in open"),
        "{e}"
    );
}

#[test]
fn panic_in_an_operation_becomes_an_error_and_the_engine_keeps_working() {
    let path = distkv_tests::plugin_library("distkv-example-memory");
    let engine = PluginEngine::load(&path, r#"{"panic_on": "get"}"#).unwrap();
    let mut batch = WriteBatch::new();
    batch.put(b"k".to_vec(), b"v".to_vec());
    engine.write(batch).unwrap();
    match engine.get(b"k") {
        Err(Error::Other(message)) => {
            assert!(
                message.contains("storage plugin example-memory panicked in get"),
                "{message}"
            );
            assert!(message.contains("injected panic in get"), "{message}");
        }
        other => panic!("a panic in get must become Error::Other, got {other:?}"),
    }
    assert_eq!(
        engine.scan(&KeyRange::all(), 10).unwrap(),
        vec![(b"k".to_vec(), b"v".to_vec())]
    );

    let engine = PluginEngine::load(&path, r#"{"panic_on": "scan"}"#).unwrap();
    let e = engine.scan(&KeyRange::all(), 10).unwrap_err();
    assert!(e.to_string().contains("panicked in scan"), "{e}");
}

#[test]
fn a_loaded_plugin_reports_its_name_and_stats() {
    let path = distkv_tests::plugin_library("distkv-example-memory");
    let engine = PluginEngine::load(&path, r#"{"data_dir": "/unused"}"#).unwrap();
    assert_eq!(engine.name(), "example-memory");
    assert_eq!(engine.path(), path.as_path());
    let mut batch = WriteBatch::new();
    batch
        .put(b"a".to_vec(), b"12".to_vec())
        .put(b"b".to_vec(), Vec::new());
    engine.write(batch).unwrap();
    let stats = engine.stats();
    assert_eq!(stats.engine, "example-memory");
    assert_eq!(stats.get("keys"), Some(&distkv_engine::StatValue::U64(2)));
    assert_eq!(stats.get("bytes"), Some(&distkv_engine::StatValue::U64(4)));
    engine.close().unwrap();
    assert!(matches!(engine.get(b"a"), Err(Error::Closed)));
}

#[test]
fn a_panic_in_any_operation_is_caught_at_the_boundary() {
    let path = distkv_tests::plugin_library("distkv-example-memory");
    let load = |op: &str| PluginEngine::load(&path, &format!(r#"{{"panic_on": "{op}"}}"#)).unwrap();
    let expect_panic = |op: &str, result: distkv_engine::Result<()>| match result {
        Err(Error::Other(message)) => {
            assert!(message.contains(&format!("panicked in {op}")), "{message}");
        }
        other => panic!("a panic in {op} must become Error::Other, got {other:?}"),
    };
    let mut batch = WriteBatch::new();
    batch.put(b"k".to_vec(), b"v".to_vec());
    expect_panic("write", load("write").write(batch));
    expect_panic("flush", load("flush").flush());
    expect_panic("close", load("close").close());
    let stats = load("stats").stats();
    match stats.get("error") {
        Some(distkv_engine::StatValue::Text(message)) => {
            assert!(message.contains("panicked in stats"), "{message}")
        }
        other => panic!("a panic in stats must show as an error entry, got {other:?}"),
    }
}
