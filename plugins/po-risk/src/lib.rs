//! `po-risk`: scores a purchase order's risk from its vendor, total and lines.
//!
//! Input: a unified `purchase_order` (plus an optional `vendor` record).
//! Config: `{ "high_value": 10000, "blocked_vendors": ["V-1012"] }`.
//! Output: `{ "po", "risk" (0..1), "reasons": [...] }`.

use serde::{Deserialize, Serialize};
use sluice_plugin_sdk::{PluginError, log, plugin};

#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    item_id: Option<String>,
    quantity: f64,
    unit_price: f64,
}

#[derive(Deserialize)]
struct Vendor {
    status: String,
}

#[derive(Deserialize)]
struct Input {
    number: String,
    vendor_id: String,
    #[serde(default)]
    vendor_name: Option<String>,
    total: f64,
    #[serde(default)]
    lines: Vec<Line>,
    #[serde(default)]
    vendor: Option<Vendor>,
}

#[derive(Deserialize)]
#[serde(default)]
struct Config {
    high_value: f64,
    blocked_vendors: Vec<String>,
    out_of_stock_items: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            high_value: 10_000.0,
            blocked_vendors: Vec::new(),
            out_of_stock_items: Vec::new(),
        }
    }
}

#[derive(Serialize)]
struct Output {
    po: String,
    risk: f64,
    reasons: Vec<String>,
}

fn run(input: Input, config: Config) -> Result<Output, PluginError> {
    if input.total < 0.0 {
        return Err(PluginError::new(
            "invalid_total",
            format!("PO {} has a negative total", input.number),
        ));
    }
    let mut risk: f64 = 0.0;
    let mut reasons = Vec::new();
    if input.vendor_name.is_none() && input.vendor.is_none() {
        risk += 0.4;
        reasons.push(format!("vendor {} is unknown", input.vendor_id));
    }
    if config.blocked_vendors.contains(&input.vendor_id)
        || input.vendor.as_ref().is_some_and(|v| v.status == "blocked")
    {
        risk += 0.5;
        reasons.push(format!("vendor {} is blocked", input.vendor_id));
    }
    if input.total > config.high_value {
        let over = (input.total / config.high_value).log10().clamp(0.0, 1.0);
        risk += 0.2 + 0.2 * over;
        reasons.push(format!(
            "total {} is over {}",
            input.total, config.high_value
        ));
    }
    let line_sum: f64 = input.lines.iter().map(|l| l.quantity * l.unit_price).sum();
    if !input.lines.is_empty() && (line_sum - input.total).abs() > 0.01 * input.total.max(1.0) {
        risk += 0.2;
        reasons.push(format!(
            "lines add up to {line_sum:.2}, not {}",
            input.total
        ));
    }
    let short = input
        .lines
        .iter()
        .filter(|l| {
            l.item_id
                .as_ref()
                .is_some_and(|i| config.out_of_stock_items.contains(i))
        })
        .count();
    if short > 0 {
        risk += 0.1 * short as f64;
        reasons.push(format!("{short} line(s) order out-of-stock items"));
    }
    let risk = (risk.min(1.0) * 100.0).round() / 100.0;
    log::debug(&format!("PO {} scored {risk}", input.number));
    Ok(Output {
        po: input.number,
        risk,
        reasons,
    })
}

plugin!(run);
