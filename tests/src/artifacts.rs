//! Locating the workspace's build artifacts that tests load or run: plugin libraries.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The shared library of the workspace's cdylib package `package`, built (or brought up to
/// date) once per test process with `$CARGO build -p <package>` into the target directory
/// of the running test binary, in the same profile.
pub fn plugin_library(package: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(path) = built.get(package) {
        return path.clone();
    }
    // The test binary is <target>/<profile>/deps/<name>; libraries land in <target>/<profile>.
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in <target>/<profile>/deps");
    let target_dir = profile_dir
        .parent()
        .expect("profile directory has a parent");
    let library = profile_dir.join(format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        package.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    ));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", package])
        .arg("--target-dir")
        .arg(target_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            build.arg("--release");
        }
        Some(other) => {
            build.args(["--profile", other]);
        }
        None => {}
    }
    build.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build plugin {package}: {e}"));
    assert!(
        status.success(),
        "cargo build -p {package} failed ({status})"
    );
    assert!(
        library.is_file(),
        "cargo build -p {package} did not produce {}",
        library.display()
    );
    built.insert(package.to_string(), library.clone());
    library
}
