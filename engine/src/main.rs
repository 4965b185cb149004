//! The `sluice` binary; see [`sluice::cli`].

/// mimalloc instead of the system allocator: flows, connectors and syncs
/// build and drop many small JSON values, where glibc's malloc spent a third
/// of the connector benchmark's time (see `benches/connectors.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    std::process::exit(sluice::cli::main().await);
}
