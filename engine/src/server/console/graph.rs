//! A flow's steps drawn as a picture: a layered layout of the DAG (a
//! step's column is the length of the longest `needs` chain before it),
//! laid out here and drawn as SVG by the templates.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use crate::steps::Step;

const COL: i64 = 190;
const ROW: i64 = 64;
const W: i64 = 160;
const H: i64 = 40;

/// Node boxes and edges of the steps' DAG, each node with its status from
/// `statuses` (by step id; `pending` when absent, none when `statuses` is
/// empty: the flow's picture, not a run's).
pub fn draw(steps: &[Step], statuses: &BTreeMap<String, String>) -> Value {
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    // Steps are validated acyclic; the depth is bounded by the step count
    // anyway, so a cycle could not loop forever.
    let mut depth = vec![0usize; steps.len()];
    for _ in 0..steps.len() {
        let mut changed = false;
        for (i, s) in steps.iter().enumerate() {
            for need in &s.needs {
                if let Some(&j) = index.get(need.as_str())
                    && depth[i] < depth[j] + 1
                    && depth[j] < steps.len()
                {
                    depth[i] = depth[j] + 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut rows: BTreeMap<usize, i64> = BTreeMap::new();
    let mut at = vec![(0i64, 0i64); steps.len()];
    for (i, d) in depth.iter().enumerate() {
        let row = rows.entry(*d).or_insert(0);
        at[i] = (10 + *d as i64 * COL, 10 + *row * ROW);
        *row += 1;
    }
    let nodes: Vec<Value> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let label: String = s.id.chars().take(20).collect();
            json!({
                "id": s.id,
                "label": label,
                "kind": s.kind().map(|k| k.name()).unwrap_or(""),
                "x": at[i].0,
                "y": at[i].1,
                "status": match statuses.get(&s.id) {
                    Some(status) => status.as_str(),
                    None if statuses.is_empty() => "",
                    None => "pending",
                },
            })
        })
        .collect();
    let mut edges = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        for need in &s.needs {
            if let Some(&j) = index.get(need.as_str()) {
                edges.push(json!({
                    "x1": at[j].0 + W, "y1": at[j].1 + H / 2,
                    "x2": at[i].0, "y2": at[i].1 + H / 2,
                }));
            }
        }
    }
    let width = at.iter().map(|a| a.0 + W + 10).max().unwrap_or(0);
    let height = at.iter().map(|a| a.1 + H + 10).max().unwrap_or(0);
    json!({"nodes": nodes, "edges": edges, "width": width, "height": height, "w": W, "h": H})
}
