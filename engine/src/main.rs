//! The `sluice` binary; see [`sluice::cli`].

#[tokio::main]
async fn main() {
    std::process::exit(sluice::cli::main().await);
}
