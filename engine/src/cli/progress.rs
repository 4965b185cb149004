//! Live step progress for `sluice run`: a progress bar on a terminal, plain
//! lines otherwise. Everything goes to stderr so stdout stays the output.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::flow::CompiledFlow;
use crate::run::RunEvent;
use crate::store::StepStatus;

type Display = (
    Option<mpsc::UnboundedSender<RunEvent>>,
    Option<JoinHandle<()>>,
);

/// Starts displaying events of a run of `flow`; returns the sender for the
/// engine and the display task.
pub fn start(flow: &CompiledFlow) -> Display {
    display(flow.id().to_string(), flow.steps.len() as u64)
}

/// Like [`start`], for a run whose flow the engine loads itself (resume).
pub fn start_untitled() -> Display {
    display("run".to_string(), 0)
}

fn display(flow_id: String, total: u64) -> Display {
    let (tx, mut rx) = mpsc::unbounded_channel::<RunEvent>();
    let tty = std::io::stderr().is_terminal();
    let handle = tokio::spawn(async move {
        let bar = if tty {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix} [{bar:30}] {pos}/{len} steps {msg}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            b.set_prefix(flow_id.clone());
            b.enable_steady_tick(std::time::Duration::from_millis(100));
            Some(b)
        } else {
            None
        };
        let line = |text: String| match &bar {
            Some(b) => b.println(text),
            None => eprintln!("{text}"),
        };
        while let Some(ev) = rx.recv().await {
            match ev {
                RunEvent::Started {
                    run_id,
                    already_done,
                    total,
                } => {
                    line(format!(
                        "run {run_id} of {flow_id}: {total} steps{}",
                        if already_done > 0 {
                            format!(", {already_done} already done")
                        } else {
                            String::new()
                        }
                    ));
                    if let Some(b) = &bar {
                        b.set_length(total as u64);
                        b.set_position(already_done as u64);
                    }
                }
                RunEvent::StepWaiting { step_id, waits_for } => {
                    line(format!("  wait {step_id}: waits for {waits_for}"));
                }
                RunEvent::StepStarted { step_id } => {
                    if let Some(b) = &bar {
                        b.set_message(format!("running {step_id}"));
                    }
                }
                RunEvent::StepFinished {
                    step_id,
                    status,
                    elapsed_ms,
                    attempts,
                    error,
                } => {
                    let mark = match status {
                        StepStatus::Succeeded => "ok  ",
                        StepStatus::Skipped => "skip",
                        StepStatus::Failed => "FAIL",
                        _ => "    ",
                    };
                    let retries = if attempts > 1 {
                        format!(" after {attempts} attempts")
                    } else {
                        String::new()
                    };
                    let err = error.map(|e| format!(": {e}")).unwrap_or_default();
                    line(format!(
                        "  {mark} {step_id} ({elapsed_ms} ms{retries}){err}"
                    ));
                    if let Some(b) = &bar {
                        b.inc(1);
                    }
                }
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
    });
    (Some(tx), Some(handle))
}
