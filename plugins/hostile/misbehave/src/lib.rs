//! Test fixture: misbehaves as its input (a JSON string) asks, so the host's
//! limits can be tested one by one. Never upload this anywhere real.

use sluice_plugin_sdk::{Guest, StepError, log};

struct Misbehave;

/// Recursion on the wasm stack (scalars only, so no shadow-stack frames).
fn recurse(n: u64) -> u64 {
    if n == u64::MAX {
        return 0;
    }
    std::hint::black_box(recurse(std::hint::black_box(n + 1))) + 1
}

impl Guest for Misbehave {
    fn run(input: String) -> Result<String, StepError> {
        match input.trim_matches('"') {
            "ok" => Ok("{\"ok\":true}".into()),
            // Writes to a global and to the heap, and reports what an earlier
            // call left there: a fresh instance per call must see nothing.
            "remember" => {
                static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
                let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let mut seen = SEEN.lock().map_err(|_| StepError {
                    code: "poisoned".into(),
                    message: "lock poisoned".into(),
                })?;
                let before = seen.len();
                seen.push("x".repeat(64 * 1024));
                Ok(format!("{{\"calls\":{calls},\"seen_before\":{before}}}"))
            }
            "spin" => loop {
                std::hint::black_box(0u64);
            },
            "memory" => {
                let mut hog: Vec<Vec<u8>> = Vec::new();
                loop {
                    hog.push(vec![1u8; 16 * 1024 * 1024]);
                    std::hint::black_box(&hog);
                }
            }
            "recursion" => Ok(recurse(0).to_string()),
            "panic" => panic!("the plugin panicked on purpose"),
            "not_json" => Ok("this is not JSON".into()),
            "huge_output" => Ok(format!("\"{}\"", "x".repeat(100 * 1024 * 1024))),
            "log_flood" => {
                for i in 0..100_000 {
                    log::info(&format!("line {i} {}", "y".repeat(4096)));
                }
                Ok("{\"logged\":true}".into())
            }
            "read_file" => match std::fs::read_to_string("/etc/passwd") {
                Ok(s) => Ok(format!("{{\"leaked\":{}}}", s.len())),
                Err(e) => Err(StepError {
                    code: "io".into(),
                    message: e.to_string(),
                }),
            },
            "error" => Err(StepError {
                code: "vendor_blocked".into(),
                message: "vendor V-1012 is blocked".into(),
            }),
            other => Err(StepError {
                code: "unknown_mode".into(),
                message: format!("unknown mode {other}"),
            }),
        }
    }
}

sluice_plugin_sdk::bindings::__export_plugin_world!(Misbehave with_types_in sluice_plugin_sdk::bindings);
