//! Runs one emulator in the foreground, to try connections by hand:
//! `cargo run -p sluice-emulators -- maximo 8088 [RECORDS]`.

use sluice_emulators::{business_central, maximo, netsuite, sap};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let system = args.first().map(String::as_str).unwrap_or("");
    let port: u16 = args.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    let n: usize = args.get(2).and_then(|p| p.parse().ok()).unwrap_or(50);
    let emu = match system {
        "sap" => sap::start_on(n, 3, port).await,
        "netsuite" => netsuite::start_on(n, 3, port).await,
        "business_central" => business_central::start_on(n, 3, port).await,
        "maximo" => maximo::start_on(n, port).await,
        _ => {
            eprintln!(
                "usage: sluice-emulators sap|netsuite|business_central|maximo [PORT] [RECORDS]"
            );
            std::process::exit(2);
        }
    };
    let creds = match system {
        "sap" => format!("user {} password {}", sap::USER, sap::PASSWORD),
        "netsuite" => format!(
            "client {} secret {}",
            netsuite::CLIENT_ID,
            netsuite::CLIENT_SECRET
        ),
        "business_central" => format!(
            "tenant {} company {} client {} secret {} (login_url = base_url)",
            business_central::TENANT,
            business_central::COMPANY,
            business_central::CLIENT_ID,
            business_central::CLIENT_SECRET
        ),
        _ => format!("apikey {}", maximo::API_KEY),
    };
    eprintln!(
        "{system} emulator on {} ({creds}); Ctrl-C stops it",
        emu.base_url
    );
    let _ = tokio::signal::ctrl_c().await;
}
