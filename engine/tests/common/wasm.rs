//! Building and reading the plugins in `plugins/` (wasm32-wasip2), for
//! tests and benchmarks.

use std::path::PathBuf;
use std::sync::Mutex;

static BUILT: Mutex<bool> = Mutex::new(false);

/// The plugins workspace.
pub fn plugins_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins")
}

/// Builds the plugins once per process (cargo is a no-op when they are fresh).
pub fn build_plugins() {
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if *built {
        return;
    }
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(plugins_dir().join("Cargo.toml"))
        // Where `plugin_path` reads them, whatever CARGO_TARGET_DIR says.
        .arg("--target-dir")
        .arg(plugins_dir().join("target"))
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "building the plugins failed; is the wasm32-wasip2 target installed (`rustup target add wasm32-wasip2`)?"
    );
    *built = true;
}

/// Path of a built plugin, e.g. `po_risk`.
pub fn plugin_path(name: &str) -> PathBuf {
    build_plugins();
    plugins_dir()
        .join("target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

/// Bytes of a built plugin.
pub fn plugin_wasm(name: &str) -> Vec<u8> {
    let path = plugin_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}
