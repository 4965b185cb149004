//! `sluice graph`: a flow's DAG as Mermaid or Graphviz DOT.

use crate::flow::CompiledFlow;

fn label(flow: &CompiledFlow, i: usize) -> String {
    let s = &flow.steps[i];
    let kind = flow.flow.steps[i].kind().map(|k| k.name()).unwrap_or("?");
    let mut extra = String::new();
    if s.for_each.is_some() {
        extra.push_str(" · for_each");
    }
    if s.condition.is_some() {
        extra.push_str(" · if");
    }
    format!("{} ({kind}{extra})", s.id)
}

/// Mermaid `flowchart TD`.
pub fn mermaid(flow: &CompiledFlow) -> String {
    let mut out = String::from("flowchart TD\n");
    for i in 0..flow.steps.len() {
        out.push_str(&format!(
            "    {}[\"{}\"]\n",
            flow.steps[i].id,
            label(flow, i)
        ));
    }
    for (i, s) in flow.steps.iter().enumerate() {
        for &n in &s.needs {
            out.push_str(&format!(
                "    {} --> {}\n",
                flow.steps[n].id, flow.steps[i].id
            ));
        }
    }
    out
}

/// Graphviz `digraph`.
pub fn dot(flow: &CompiledFlow) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n    rankdir=TB;\n    node [shape=box];\n",
        flow.id()
    );
    for i in 0..flow.steps.len() {
        out.push_str(&format!(
            "    \"{}\" [label=\"{}\"];\n",
            flow.steps[i].id,
            label(flow, i)
        ));
    }
    for (i, s) in flow.steps.iter().enumerate() {
        for &n in &s.needs {
            out.push_str(&format!(
                "    \"{}\" -> \"{}\";\n",
                flow.steps[n].id, flow.steps[i].id
            ));
        }
    }
    out.push_str("}\n");
    out
}
