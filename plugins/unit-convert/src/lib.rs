//! `unit-convert`: converts quantities on inventory or order lines between
//! units of measure (mass, length, volume, count packs).
//!
//! Input: `{ "lines": [{ "quantity": 2.5, "unit_of_measure": "KG", ... }] }`.
//! Config: `{ "to": { "mass": "LB", "length": "FT", "volume": "GAL" }, "pack_sizes": { "BOX": 12 } }`.
//! Output: the lines with `quantity` and `unit_of_measure` converted and the
//! originals kept as `original_quantity` / `original_unit`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_plugin_sdk::serde_json::{Map, Value};
use sluice_plugin_sdk::{PluginError, plugin};

#[derive(Deserialize)]
struct Input {
    lines: Vec<Map<String, Value>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Config {
    to: BTreeMap<String, String>,
    pack_sizes: BTreeMap<String, f64>,
}

#[derive(Serialize)]
struct Output {
    lines: Vec<Map<String, Value>>,
    converted: usize,
}

/// (dimension, factor to the dimension's base unit).
fn unit(u: &str) -> Option<(&'static str, f64)> {
    Some(match u.to_ascii_uppercase().as_str() {
        "KG" => ("mass", 1.0),
        "G" => ("mass", 0.001),
        "LB" => ("mass", 0.453_592_37),
        "T" => ("mass", 1000.0),
        "M" => ("length", 1.0),
        "CM" => ("length", 0.01),
        "MM" => ("length", 0.001),
        "FT" => ("length", 0.3048),
        "IN" => ("length", 0.0254),
        "L" => ("volume", 1.0),
        "ML" => ("volume", 0.001),
        "GAL" => ("volume", 3.785_411_784),
        "EA" => ("count", 1.0),
        _ => return None,
    })
}

fn run(input: Input, config: Config) -> Result<Output, PluginError> {
    let mut converted = 0;
    let mut lines = Vec::with_capacity(input.lines.len());
    for (i, mut line) in input.lines.into_iter().enumerate() {
        let qty = line
            .get("quantity")
            .and_then(Value::as_f64)
            .ok_or_else(|| {
                PluginError::new(
                    "invalid_input",
                    format!("line {i} has no numeric `quantity`"),
                )
            })?;
        let from = line
            .get("unit_of_measure")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                PluginError::new(
                    "invalid_input",
                    format!("line {i} has no `unit_of_measure`"),
                )
            })?
            .to_string();
        let (qty_base, dim) = if let Some(pack) = config.pack_sizes.get(&from) {
            (qty * pack, "count")
        } else if let Some((dim, f)) = unit(&from) {
            (qty * f, dim)
        } else {
            return Err(PluginError::new(
                "unknown_unit",
                format!("line {i}: unknown unit of measure `{from}`"),
            ));
        };
        let target = config.to.get(dim).cloned().unwrap_or_else(|| from.clone());
        let factor = match unit(&target) {
            Some((d, f)) if d == dim => f,
            _ if target == from => {
                lines.push(line);
                continue;
            }
            _ => {
                return Err(PluginError::new(
                    "incompatible_units",
                    format!("line {i}: cannot convert `{from}` ({dim}) to `{target}`"),
                ));
            }
        };
        let new_qty = (qty_base / factor * 1e6).round() / 1e6;
        if target != from {
            line.insert("original_quantity".into(), Value::from(qty));
            line.insert("original_unit".into(), Value::from(from));
            line.insert("quantity".into(), Value::from(new_qty));
            line.insert("unit_of_measure".into(), Value::from(target));
            converted += 1;
        }
        lines.push(line);
    }
    Ok(Output { lines, converted })
}

plugin!(run);
