//! The wasmtime host: runs plugin components under hard limits.
//!
//! Nothing reaches a plugin unless granted: its WASI context has no
//! preopened directories, no environment, no arguments and no network;
//! `wasi:sockets` and `wasi:http` imports are refused at upload. Each call
//! gets a fresh store with: a wall-clock deadline enforced by epoch
//! interruption (a ticker thread advances the epoch every millisecond; the
//! guest yields to tokio every tick and traps at the deadline), a tokio
//! timeout as a backstop, a memory cap through a `ResourceLimiter` that
//! records what it refused, an optional fuel budget, a wasm stack cap, and
//! input/output/log size caps. Each breach is its own [`CallError`].
//!
//! Fast path: components are compiled once (cached on disk by sha256 and
//! the engine's compatibility hash), an `InstancePre` is kept per plugin, and
//! the pooling allocator is used when the machine allows it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Host bindings of the `sluice:plugin` world (in a module: the WIT package
/// is also called `sluice`, like this crate).
mod bindings {
    wasmtime::component::bindgen!({
        path: "../plugins/wit",
        world: "plugin",
        exports: { default: async },
    });
}

use self::bindings::sluice::plugin::host::{Host, Level};
use self::bindings::{Plugin, PluginPre};

/// Interfaces a plugin may import. Anything else is refused at upload.
/// Rust's standard library imports the CLI, I/O, clock, random and
/// filesystem interfaces even when unused; they are linked, but the
/// filesystem has no preopened directory, so nothing is reachable.
pub const GRANTED_IMPORT_PREFIXES: &[&str] = &[
    "sluice:plugin/host",
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
];

/// Per-call limits.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// Wall-clock time for one call.
    pub timeout: Duration,
    /// Largest linear memory, bytes.
    pub memory_bytes: usize,
    /// Instruction budget (wasmtime fuel); `None` = unlimited.
    pub fuel: Option<u64>,
    /// Largest input JSON, bytes.
    pub max_input_bytes: usize,
    /// Largest output JSON, bytes.
    pub max_output_bytes: usize,
    /// Log lines kept per call.
    pub max_log_lines: usize,
    /// Longest log line kept, bytes.
    pub max_log_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(10),
            memory_bytes: 128 << 20,
            fuel: None,
            max_input_bytes: 1 << 20,
            max_output_bytes: 1 << 20,
            max_log_lines: 100,
            max_log_line_bytes: 1024,
        }
    }
}

/// Why a call failed. Every variant names the plugin and version.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// Ran past the wall-clock limit.
    #[error("plugin {plugin} timed out after {limit_ms} ms")]
    Timeout {
        /// `name@version`.
        plugin: String,
        /// The limit.
        limit_ms: u64,
    },
    /// Tried to grow memory past the cap.
    #[error(
        "plugin {plugin} exceeded its memory limit of {limit_bytes} bytes (asked for {requested_bytes})"
    )]
    MemoryLimitExceeded {
        /// `name@version`.
        plugin: String,
        /// The cap.
        limit_bytes: usize,
        /// What it asked for.
        requested_bytes: usize,
    },
    /// Used up its fuel.
    #[error("plugin {plugin} used up its CPU budget of {fuel} instructions")]
    CpuBudgetExceeded {
        /// `name@version`.
        plugin: String,
        /// The budget.
        fuel: u64,
    },
    /// Overflowed the wasm stack.
    #[error("plugin {plugin} overflowed its stack (deep recursion)")]
    StackOverflow {
        /// `name@version`.
        plugin: String,
    },
    /// Trapped (panic, unreachable, out-of-bounds access...).
    #[error("plugin {plugin} crashed: {trap}\n{backtrace}")]
    PluginCrashed {
        /// `name@version`.
        plugin: String,
        /// The trap.
        trap: String,
        /// Wasm backtrace, when available.
        backtrace: String,
    },
    /// Output not JSON, or too large.
    #[error("plugin {plugin} returned invalid output: {reason}")]
    InvalidOutput {
        /// `name@version`.
        plugin: String,
        /// What is wrong.
        reason: String,
    },
    /// Input too large.
    #[error("input to plugin {plugin} is {size} bytes; the limit is {limit}")]
    InputTooLarge {
        /// `name@version`.
        plugin: String,
        /// Size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// The plugin returned its own error.
    #[error("plugin {plugin} failed: {code}: {message}")]
    PluginError {
        /// `name@version`.
        plugin: String,
        /// The plugin's code.
        code: String,
        /// The plugin's message.
        message: String,
    },
    /// Could not instantiate (host problem).
    #[error("plugin {plugin} could not start: {reason}")]
    Instantiate {
        /// `name@version`.
        plugin: String,
        /// Why.
        reason: String,
    },
}

/// A successful call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallOutput {
    /// The plugin's JSON output.
    pub output: Value,
    /// Log lines kept (level, text).
    pub logs: Vec<(String, String)>,
    /// Log lines dropped by the caps.
    pub logs_dropped: usize,
}

struct MemoryCap {
    limit: usize,
    refused: Option<usize>,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryCap,
    config: Value,
    logs: Vec<(String, String)>,
    logs_dropped: usize,
    max_log_lines: usize,
    max_log_line_bytes: usize,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Host for CallState {
    fn log(&mut self, level: Level, message: String) {
        if self.logs.len() >= self.max_log_lines {
            self.logs_dropped += 1;
            return;
        }
        let mut text = message;
        if text.len() > self.max_log_line_bytes {
            let mut cut = self.max_log_line_bytes;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        let level = match level {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        self.logs.push((level.to_string(), text));
    }

    fn config_get(&mut self, key: String) -> Option<String> {
        if key.is_empty() {
            return Some(self.config.to_string());
        }
        self.config.get(&key).map(Value::to_string)
    }
}

/// A plugin ready to call: compiled, linked, pre-instantiated.
#[derive(Clone)]
pub struct LoadedPlugin {
    /// `name@version`.
    pub label: String,
    sha256: String,
    bytes: Arc<[u8]>,
    pre: PluginPre<CallState>,
}

/// Checks bytes against `runtime`: a component of the plugin world that
/// imports only granted interfaces.
fn validate_with(runtime: &Runtime, bytes: &[u8]) -> Result<Component, InvalidPlugin> {
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(InvalidPlugin("this is a core WebAssembly module, not a component; build with `--target wasm32-wasip2` (or wrap it with `wasm-tools component new`)".into()));
    }
    if !wasmparser::Parser::is_component(bytes) {
        return Err(InvalidPlugin(
            "this is not WebAssembly (no component header)".into(),
        ));
    }
    let component = Component::new(&runtime.engine, bytes)
        .map_err(|e| InvalidPlugin(format!("the component does not compile: {e}")))?;
    for (name, _) in component.component_type().imports(&runtime.engine) {
        if !GRANTED_IMPORT_PREFIXES.iter().any(|p| name.starts_with(p)) {
            return Err(InvalidPlugin(format!(
                "the plugin imports `{name}`, which is not granted to plugins (allowed: {})",
                GRANTED_IMPORT_PREFIXES.join(", ")
            )));
        }
    }
    let pre = runtime
        .linker
        .instantiate_pre(&component)
        .map_err(|e| InvalidPlugin(format!("the plugin cannot be linked: {e}")))?;
    PluginPre::new(pre).map_err(|e| InvalidPlugin(format!("the plugin does not export the sluice:plugin world (`run: func(input: string) -> result<string, step-error>`): {e}")))?;
    Ok(component)
}

/// Why bytes cannot be a plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPlugin(pub String);

/// One wasmtime engine with its linker and its compiled plugins.
struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    loaded: Mutex<HashMap<String, PluginPre<CallState>>>,
    cache_dir: Option<PathBuf>,
}

impl Runtime {
    fn new(metered: bool, cache_dir: Option<PathBuf>) -> Result<(Runtime, bool), String> {
        let pooled = Engine::new(&config(true, true, metered))
            .or_else(|_| Engine::new(&config(true, false, metered)));
        let (engine, pooling) = match pooled {
            Ok(e) => (e, true),
            Err(err) => {
                tracing::warn!(error = %err, "pooling allocator unavailable; using on-demand allocation");
                (
                    Engine::new(&config(false, false, metered))
                        .map_err(|e| format!("cannot start wasmtime: {e}"))?,
                    false,
                )
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| e.to_string())?;
        Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(|e| e.to_string())?;
        Ok((
            Runtime {
                engine,
                linker,
                loaded: Mutex::new(HashMap::new()),
                cache_dir,
            },
            pooling,
        ))
    }

    fn key(&self, sha256: &str) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{sha256}-{:016x}", h.finish())
    }

    /// Compiles (or reads the on-disk compilation of) a validated component.
    fn pre(&self, sha256: &str, bytes: &[u8]) -> Result<PluginPre<CallState>, InvalidPlugin> {
        let key = self.key(sha256);
        if let Some(p) = self.loaded.lock().expect("plugin cache lock").get(&key) {
            return Ok(p.clone());
        }
        let file = self
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{key}.cwasm")));
        let component = match file.as_ref().filter(|p| p.exists()) {
            // SAFETY: the file was written by `Component::serialize` of an engine
            // with this compatibility hash (it is in the name), in a directory
            // only this host writes.
            Some(path) => unsafe { Component::deserialize_file(&self.engine, path) }
                .map_err(|e| InvalidPlugin(format!("cached compilation unusable: {e}")))?,
            None => {
                let c = validate_with(self, bytes)?;
                if let Some(path) = &file
                    && let Ok(bin) = c.serialize()
                {
                    let _ =
                        std::fs::create_dir_all(path.parent().expect("cache file has a parent"));
                    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                    if std::fs::write(&tmp, bin).is_ok() {
                        let _ = std::fs::rename(&tmp, path);
                    }
                }
                c
            }
        };
        let pre = PluginPre::new(
            self.linker
                .instantiate_pre(&component)
                .map_err(|e| InvalidPlugin(e.to_string()))?,
        )
        .map_err(|e| InvalidPlugin(e.to_string()))?;
        self.loaded
            .lock()
            .expect("plugin cache lock")
            .insert(key, pre.clone());
        Ok(pre)
    }
}

/// Runs plugins. One per process; cheap to share behind an `Arc`.
///
/// Two engines: the everyday one, and one with fuel metering for calls that
/// set a fuel budget (metering slows compute-heavy code, so only the calls
/// that ask for a budget pay for it).
pub struct PluginHost {
    plain: Runtime,
    metered: Runtime,
    plugins: Mutex<HashMap<String, LoadedPlugin>>,
    stop_ticker: Arc<AtomicBool>,
    /// Whether the pooling allocator is in use (false: on-demand fallback).
    pub pooling: bool,
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// Bytes of a pooled linear memory (or table) kept resident between calls.
const KEEP_RESIDENT: usize = 16 << 20;

/// Milliseconds per epoch tick.
const TICK: Duration = Duration::from_millis(1);

fn config(pooling: bool, pagemap_scan: bool, metered: bool) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    c.consume_fuel(metered);
    c.max_wasm_stack(512 * 1024);
    if pooling {
        let mut p = wasmtime::PoolingAllocationConfig::default();
        // Sized for a small machine: 64 concurrent instances, 1 GiB address
        // space reserved per memory (memories grow within it up to the cap).
        p.total_component_instances(64);
        p.total_core_instances(128);
        p.total_memories(128);
        p.total_tables(128);
        p.max_memory_size(1 << 30);
        // Reset a used slot by rewriting only the pages the call dirtied
        // (found with Linux's PAGEMAP_SCAN, 6.7+) instead of unmapping them:
        // the next call then takes no page faults on its stack and heap.
        // Without the ioctl (older kernels, other systems) slots are reset
        // with `madvise` (keeping memory resident would `memset` all of it).
        if pagemap_scan {
            p.pagemap_scan(wasmtime::Enabled::Yes);
            p.linear_memory_keep_resident(KEEP_RESIDENT);
            p.table_keep_resident(KEEP_RESIDENT);
        }
        c.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(p));
    }
    c
}

impl PluginHost {
    /// A host caching compiled plugins in `cache_dir` (none: memory only).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<PluginHost, String> {
        let (plain, pooling) = Runtime::new(false, cache_dir.clone())?;
        let (metered, _) = Runtime::new(true, cache_dir)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (a, b, s) = (plain.engine.clone(), metered.engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    a.increment_epoch();
                    b.increment_epoch();
                }
            })
            .map_err(|e| format!("cannot start the epoch ticker: {e}"))?;
        Ok(PluginHost {
            plain,
            metered,
            plugins: Mutex::new(HashMap::new()),
            stop_ticker: stop,
            pooling,
        })
    }

    /// Checks that bytes are a component of the plugin world that imports
    /// only granted interfaces. Returns the compiled component.
    pub fn validate(&self, bytes: &[u8]) -> Result<Component, InvalidPlugin> {
        validate_with(&self.plain, bytes)
    }

    /// A plugin already loaded in this process, if any.
    pub fn loaded(&self, label: &str, sha256: &str) -> Option<LoadedPlugin> {
        let found = self
            .plugins
            .lock()
            .expect("plugin map lock")
            .get(sha256)
            .cloned()?;
        Some(LoadedPlugin {
            label: label.to_string(),
            ..found
        })
    }

    /// Loads a plugin (by its sha256), compiling it once and caching the result.
    pub fn load(
        &self,
        label: &str,
        sha256: &str,
        bytes: &[u8],
    ) -> Result<LoadedPlugin, InvalidPlugin> {
        if let Some(p) = self.loaded(label, sha256) {
            return Ok(p);
        }
        let pre = self.plain.pre(sha256, bytes)?;
        let p = LoadedPlugin {
            label: label.to_string(),
            sha256: sha256.to_string(),
            bytes: Arc::from(bytes),
            pre,
        };
        self.plugins
            .lock()
            .expect("plugin map lock")
            .insert(sha256.to_string(), p.clone());
        Ok(p)
    }

    /// Calls a plugin with JSON input and config under `limits`.
    pub async fn call(
        &self,
        plugin: &LoadedPlugin,
        input: &Value,
        config: &Value,
        limits: &Limits,
    ) -> Result<CallOutput, CallError> {
        let label = plugin.label.clone();
        let input_text = input.to_string();
        if input_text.len() > limits.max_input_bytes {
            return Err(CallError::InputTooLarge {
                plugin: label,
                size: input_text.len(),
                limit: limits.max_input_bytes,
            });
        }
        let state = CallState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            memory: MemoryCap {
                limit: limits.memory_bytes,
                refused: None,
            },
            config: config.clone(),
            logs: Vec::new(),
            logs_dropped: 0,
            max_log_lines: limits.max_log_lines,
            max_log_line_bytes: limits.max_log_line_bytes,
        };
        let (runtime, pre) = match limits.fuel {
            None => (&self.plain, plugin.pre.clone()),
            Some(_) => {
                let pre = self
                    .metered
                    .pre(&plugin.sha256, &plugin.bytes)
                    .map_err(|e| CallError::Instantiate {
                        plugin: label.clone(),
                        reason: e.0,
                    })?;
                (&self.metered, pre)
            }
        };
        let mut store = Store::new(&runtime.engine, state);
        store.limiter(|s| &mut s.memory);
        if let Some(fuel) = limits.fuel {
            store
                .set_fuel(fuel)
                .expect("the metered engine consumes fuel");
        }
        let deadline = Instant::now() + limits.timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(Trap::Interrupt.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let run = async {
            let instance = pre.instantiate_async(&mut store).await?;
            instance.call_run(&mut store, &input_text).await
        };
        let result = tokio::time::timeout(limits.timeout + Duration::from_millis(250), run).await;
        let timeout = || CallError::Timeout {
            plugin: label.clone(),
            limit_ms: limits.timeout.as_millis() as u64,
        };
        let outcome = match result {
            Err(_) => return Err(timeout()),
            Ok(r) => r,
        };
        let state = store.data();
        match outcome {
            Ok(Ok(text)) => {
                if text.len() > limits.max_output_bytes {
                    return Err(CallError::InvalidOutput {
                        plugin: label,
                        reason: format!(
                            "{} bytes; the limit is {}",
                            text.len(),
                            limits.max_output_bytes
                        ),
                    });
                }
                let output = serde_json::from_str(&text).map_err(|e| CallError::InvalidOutput {
                    plugin: label.clone(),
                    reason: format!("not JSON ({e})"),
                })?;
                Ok(CallOutput {
                    output,
                    logs: state.logs.clone(),
                    logs_dropped: state.logs_dropped,
                })
            }
            Ok(Err(e)) => Err(CallError::PluginError {
                plugin: label,
                code: e.code,
                message: e.message,
            }),
            Err(err) => {
                if let Some(requested) = state.memory.refused {
                    return Err(CallError::MemoryLimitExceeded {
                        plugin: label,
                        limit_bytes: limits.memory_bytes,
                        requested_bytes: requested,
                    });
                }
                match err.downcast_ref::<Trap>() {
                    Some(Trap::Interrupt) => Err(timeout()),
                    Some(Trap::OutOfFuel) => Err(CallError::CpuBudgetExceeded {
                        plugin: label,
                        fuel: limits.fuel.unwrap_or(u64::MAX),
                    }),
                    Some(Trap::StackOverflow) => Err(CallError::StackOverflow { plugin: label }),
                    trap => {
                        let backtrace = err
                            .downcast_ref::<wasmtime::WasmBacktrace>()
                            .map(|b| b.to_string())
                            .unwrap_or_default();
                        let what = match trap {
                            Some(t) => t.to_string(),
                            None => format!("{err:#}"),
                        };
                        if trap.is_none() && what.contains("instantiat") {
                            return Err(CallError::Instantiate {
                                plugin: label,
                                reason: what,
                            });
                        }
                        Err(CallError::PluginCrashed {
                            plugin: label,
                            trap: what,
                            backtrace,
                        })
                    }
                }
            }
        }
    }
}
