//! `wo-priority`: ranks a maintenance work order for the planner's backlog,
//! from the asset's criticality, whether the asset is down, how overdue the
//! work is and its own priority.
//!
//! Input: `{ "work_order": {...}, "asset": {...} (optional), "today": "YYYY-MM-DD" }`.
//! Output: `{ "work_order", "score" (0..100), "band": "P1".."P4", "why": [...] }`.

use serde::{Deserialize, Serialize};
use sluice_plugin_sdk::{PluginError, plugin};

#[derive(Deserialize)]
struct WorkOrder {
    number: String,
    priority: String,
    #[serde(default)]
    due_date: Option<String>,
    status: String,
}

#[derive(Deserialize)]
struct Asset {
    status: String,
    #[serde(default)]
    criticality: Option<String>,
}

#[derive(Deserialize)]
struct Input {
    work_order: WorkOrder,
    #[serde(default)]
    asset: Option<Asset>,
    today: String,
}

#[derive(Deserialize, Default)]
struct Config {}

#[derive(Serialize)]
struct Output {
    work_order: String,
    score: u32,
    band: &'static str,
    why: Vec<String>,
}

fn weight(level: &str) -> u32 {
    match level {
        "urgent" => 40,
        "high" => 28,
        "medium" => 15,
        _ => 5,
    }
}

/// Days since 0000-03-01 for a `YYYY-MM-DD` date (civil calendar).
fn days(date: &str) -> Option<i64> {
    let mut it = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, d) = (it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?);
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    Some(365 * y + y / 4 - y / 100 + y / 400 + (153 * m + 2) / 5 + d - 1)
}

fn run(input: Input, _config: Config) -> Result<Output, PluginError> {
    let wo = input.work_order;
    if wo.status == "completed" || wo.status == "cancelled" {
        return Err(PluginError::new(
            "closed",
            format!("work order {} is {}", wo.number, wo.status),
        ));
    }
    let today = days(&input.today).ok_or_else(|| {
        PluginError::new(
            "invalid_input",
            format!("`today` is not a YYYY-MM-DD date: {}", input.today),
        )
    })?;
    let mut why = Vec::new();
    let mut score = weight(&wo.priority);
    why.push(format!(
        "priority {} (+{})",
        wo.priority,
        weight(&wo.priority)
    ));
    if let Some(a) = &input.asset {
        if let Some(c) = &a.criticality {
            let w = weight(c) * 3 / 4;
            score += w;
            why.push(format!("asset criticality {c} (+{w})"));
        }
        if a.status == "down" {
            score += 25;
            why.push("asset is down (+25)".into());
        }
    }
    if let Some(due) = wo.due_date.as_deref().and_then(days) {
        let late = today - due;
        if late > 0 {
            let w = (late as u32).min(30) / 2 + 5;
            score += w;
            why.push(format!("{late} day(s) overdue (+{w})"));
        }
    }
    let score = score.min(100);
    let band = match score {
        75.. => "P1",
        50..=74 => "P2",
        25..=49 => "P3",
        _ => "P4",
    };
    Ok(Output {
        work_order: wo.number,
        score,
        band,
        why,
    })
}

plugin!(run);
