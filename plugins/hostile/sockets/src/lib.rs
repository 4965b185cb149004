//! Test fixture: tries to open a TCP connection, so the component imports
//! `wasi:sockets`. The registry must refuse it at upload.

use sluice_plugin_sdk::{Guest, StepError};

struct Sockets;

impl Guest for Sockets {
    fn run(_input: String) -> Result<String, StepError> {
        match std::net::TcpStream::connect("10.0.0.1:80") {
            Ok(_) => Ok("{\"connected\":true}".into()),
            Err(e) => Err(StepError {
                code: "io".into(),
                message: e.to_string(),
            }),
        }
    }
}

sluice_plugin_sdk::bindings::__export_plugin_world!(Sockets with_types_in sluice_plugin_sdk::bindings);
