//! Strict reads: the paths an expression reads, resolved before it runs.
//!
//! minijinja's strict mode rejects undefined *variables*, but a missing key
//! of a map that exists is an undefined value that a whole-string expression
//! would turn into `null`. [`read_paths`] lists every chain of attribute and
//! constant-index reads in an expression (`item.total`, `steps.a.output[0]`)
//! from minijinja's syntax tree; [`check`] walks each through the context and
//! fails on the first missing step with the whole path, the keys the value
//! does have, and a "did you mean".
//!
//! Reads are optional on purpose under `| default(...)` (or `| d`) and as the
//! subject of `is defined` / `is undefined`: such a path (and anything read
//! below it) may be missing anywhere in the same expression.

use minijinja::Value as MjValue;
use minijinja::machinery::ast::{CallArg, Expr};

use super::ExprError;
use crate::yaml::diagnostic::did_you_mean;

/// One step of a read path.
#[derive(Debug, Clone, PartialEq)]
pub enum Seg {
    /// `.name` or `["name"]`
    Key(String),
    /// `[3]`
    Index(i64),
}

/// A chain of reads from a variable, e.g. `steps.approved.output.records`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadPath {
    /// The variable.
    pub root: String,
    /// The reads below it.
    pub segs: Vec<Seg>,
    /// How many leading segments (after the root) may be missing on purpose;
    /// `None` when the path is not optional.
    pub optional_from: Option<usize>,
}

impl ReadPath {
    fn text(&self, upto: usize) -> String {
        let mut s = self.root.clone();
        for seg in &self.segs[..upto] {
            match seg {
                Seg::Key(k) if is_ident(k) => {
                    s.push('.');
                    s.push_str(k);
                }
                Seg::Key(k) => s.push_str(&format!("[{k:?}]")),
                Seg::Index(i) => s.push_str(&format!("[{i}]")),
            }
        }
        s
    }
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && c.all(|c| c.is_alphanumeric() || c == '_')
}

/// The paths an expression reads on purpose as optional (under `default`,
/// or tested with `is defined` / `is undefined`).
pub fn optional_paths(expr: &Expr<'_>) -> Vec<(String, Vec<Seg>)> {
    let mut found = Vec::new();
    let mut optional = Vec::new();
    collect(expr, &mut found, &mut optional, false);
    optional
}

/// The read paths of an expression (empty if it does not parse).
pub fn read_paths(text: &str) -> Vec<ReadPath> {
    let Ok(expr) = minijinja::machinery::parse_expr(text) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut optional = Vec::new();
    collect(&expr, &mut found, &mut optional, false);
    // A path is optional from the shortest optional path that is its prefix.
    let mut out: Vec<ReadPath> = Vec::new();
    for (root, segs) in found {
        let optional_from = optional
            .iter()
            .filter(|(r, s): &&(String, Vec<Seg>)| *r == root && segs.starts_with(s))
            .map(|(_, s)| s.len())
            .min();
        let p = ReadPath {
            root,
            segs,
            optional_from,
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    // Drop paths that are prefixes of others with the same optionality: the
    // longer read checks them on the way.
    let all = out.clone();
    out.retain(|p| {
        !all.iter().any(|q| {
            q.root == p.root
                && q.segs.len() > p.segs.len()
                && q.segs.starts_with(&p.segs)
                && q.optional_from == p.optional_from
        })
    });
    out
}

/// The chain under `e` if it is a chain of reads from a variable.
pub fn chain(e: &Expr<'_>) -> Option<(String, Vec<Seg>)> {
    match e {
        Expr::Var(v) => Some((v.id.to_string(), Vec::new())),
        Expr::GetAttr(g) => {
            let (root, mut segs) = chain(&g.expr)?;
            segs.push(Seg::Key(g.name.to_string()));
            Some((root, segs))
        }
        Expr::GetItem(g) => {
            let (root, mut segs) = chain(&g.expr)?;
            match &g.subscript_expr {
                Expr::Const(c) => {
                    if let Some(s) = c.value.as_str() {
                        segs.push(Seg::Key(s.to_string()));
                    } else if let Some(i) = c.value.as_i64() {
                        segs.push(Seg::Index(i));
                    } else {
                        return None;
                    }
                }
                _ => return None,
            }
            Some((root, segs))
        }
        _ => None,
    }
}

fn collect(
    e: &Expr<'_>,
    found: &mut Vec<(String, Vec<Seg>)>,
    optional: &mut Vec<(String, Vec<Seg>)>,
    under_optional: bool,
) {
    if let Some(c) = chain(e) {
        if under_optional {
            optional.push(c.clone());
        }
        found.push(c);
        // Dynamic subscripts below are collected by the GetItem arm only
        // when the chain breaks; a full chain has none.
        return;
    }
    let mut go = |x: &Expr<'_>, opt: bool| collect(x, found, optional, opt);
    match e {
        Expr::Var(_) | Expr::Const(_) => {}
        Expr::GetAttr(g) => go(&g.expr, false),
        Expr::GetItem(g) => {
            go(&g.expr, false);
            go(&g.subscript_expr, false);
        }
        Expr::Slice(s) => {
            go(&s.expr, false);
            for p in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                go(p, false);
            }
        }
        Expr::UnaryOp(u) => go(&u.expr, false),
        Expr::BinOp(b) => {
            go(&b.left, false);
            go(&b.right, false);
        }
        Expr::Compare(c) => {
            go(&c.expr, false);
            for op in &c.ops {
                go(&op.expr, false);
            }
        }
        Expr::IfExpr(i) => {
            go(&i.test_expr, false);
            go(&i.true_expr, false);
            if let Some(f) = &i.false_expr {
                go(f, false);
            }
        }
        Expr::Filter(f) => {
            if let Some(x) = &f.expr {
                go(x, matches!(f.name, "default" | "d"));
            }
            args(&f.args, found, optional);
        }
        Expr::Test(t) => {
            go(&t.expr, matches!(t.name, "defined" | "undefined"));
            args(&t.args, found, optional);
        }
        Expr::Call(c) => {
            // `foo()` calls a function; `x.items()` reads `x`.
            if !matches!(c.expr, Expr::Var(_)) {
                match &c.expr {
                    Expr::GetAttr(g) => go(&g.expr, false),
                    other => go(other, false),
                }
            }
            args(&c.args, found, optional);
        }
        Expr::List(l) => l.items.iter().for_each(|i| go(i, false)),
        Expr::Tuple(l) => l.items.iter().for_each(|i| go(i, false)),
        Expr::Map(m) => {
            m.keys.iter().for_each(|k| go(k, false));
            m.values.iter().for_each(|v| go(v, false));
        }
    }
}

fn args(
    args: &[CallArg<'_>],
    found: &mut Vec<(String, Vec<Seg>)>,
    optional: &mut Vec<(String, Vec<Seg>)>,
) {
    for a in args {
        match a {
            CallArg::Pos(x)
            | CallArg::Kwarg(_, x)
            | CallArg::PosSplat(x)
            | CallArg::KwargSplat(x) => collect(x, found, optional, false),
        }
    }
}

/// Up to this many keys are listed in a message.
const MAX_KEYS_SHOWN: usize = 15;

/// Resolves every path in `ctx`; the first missing read is an error.
pub fn check(paths: &[ReadPath], ctx: &MjValue, source: &str) -> Result<(), ExprError> {
    for p in paths {
        check_one(p, ctx, source)?;
    }
    Ok(())
}

fn check_one(p: &ReadPath, ctx: &MjValue, source: &str) -> Result<(), ExprError> {
    let fail = |message: String| ExprError {
        source_text: source.to_string(),
        message,
    };
    let Ok(mut value) = ctx.get_attr(&p.root) else {
        return Ok(());
    };
    if value.is_undefined() {
        // An unknown variable: minijinja's strict mode names it; functions
        // (`now`, `range`) are globals, not context values.
        return Ok(());
    }
    for (i, seg) in p.segs.iter().enumerate() {
        let next = match seg {
            Seg::Key(k) => value.get_attr(k).ok(),
            Seg::Index(n) => value.get_item(&MjValue::from(*n)).ok(),
        };
        match next {
            Some(v) if !v.is_undefined() => value = v,
            _ => {
                if p.optional_from.is_some_and(|o| i < o) {
                    return Ok(());
                }
                let whole = p.text(i + 1);
                let parent = p.text(i);
                if p.root == "secrets" && i == 0 {
                    let Seg::Key(name) = seg else {
                        return Err(fail(format!("`{whole}`: secrets are read by name")));
                    };
                    return Err(fail(format!(
                        "secret `{name}` is not set: set the environment variable {}{name} for the process running the flow",
                        super::secrets::ENV_PREFIX
                    )));
                }
                return Err(fail(describe_missing(&whole, &parent, &value, seg)));
            }
        }
    }
    Ok(())
}

fn describe_missing(whole: &str, parent: &str, value: &MjValue, seg: &Seg) -> String {
    use minijinja::value::ValueKind;
    match (value.kind(), seg) {
        (ValueKind::Map, Seg::Key(k)) => {
            let keys: Vec<String> = value
                .try_iter()
                .map(|it| it.filter_map(|k| k.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            let mut msg = format!("`{whole}` is not there: `{parent}` has no key `{k}`");
            if let Some(s) = did_you_mean(k, keys.iter().map(String::as_str)) {
                msg.push_str(&format!("; did you mean `{s}`?"));
            }
            if keys.is_empty() {
                msg.push_str(&format!(" (`{parent}` is empty)"));
            } else {
                let shown: Vec<&str> = keys
                    .iter()
                    .take(MAX_KEYS_SHOWN)
                    .map(String::as_str)
                    .collect();
                let more = if keys.len() > MAX_KEYS_SHOWN {
                    ", ..."
                } else {
                    ""
                };
                msg.push_str(&format!(" (its keys: {}{more})", shown.join(", ")));
            }
            msg.push_str("; read optional data with `| default(...)` or `is defined`");
            msg
        }
        (ValueKind::Seq, Seg::Index(i)) => format!(
            "`{whole}` is not there: `{parent}` has {} element(s), so index {i} is out of range",
            value.len().unwrap_or(0)
        ),
        (ValueKind::Seq, Seg::Key(k)) => format!(
            "`{whole}` is not there: `{parent}` is a list of {} element(s), which has no key `{k}`; take an element (`{parent}[0].{k}`) or use `for_each`",
            value.len().unwrap_or(0)
        ),
        (ValueKind::None | ValueKind::Undefined, _) => {
            format!("`{whole}` is not there: `{parent}` is null")
        }
        (kind, _) => format!("`{whole}` is not there: `{parent}` is a {kind}, not a map or a list"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> MjValue {
        super::super::from_json(&json!({
            "item": {"number": "PO-1", "total": 12.5, "vendor": null, "lines": [{"amount": 1}]},
            "secrets": {"TOKEN": "x"}
        }))
    }

    fn run(expr: &str) -> Result<(), String> {
        check(&read_paths(expr), &ctx(), expr).map_err(|e| e.message)
    }

    #[test]
    fn missing_key_names_path_keys_and_guess() {
        let e = run("item.totl").unwrap_err();
        assert!(e.contains("`item.totl` is not there"), "{e}");
        assert!(e.contains("did you mean `total`?"), "{e}");
        assert!(e.contains("its keys: number, total, vendor, lines"), "{e}");
    }

    #[test]
    fn present_paths_pass_including_indexes() {
        run("item.total * 2 + item.lines[0].amount").unwrap();
        let e = run("item.lines[3].amount").unwrap_err();
        assert!(e.contains("index 3 is out of range"), "{e}");
    }

    #[test]
    fn default_and_is_defined_make_reads_optional() {
        run("item.discount | default(0)").unwrap();
        run("item.discount.rate | d(0)").unwrap();
        run("item.discount if item.discount is defined else 0").unwrap();
        // Optional covers what is below the guarded path, not its siblings.
        let e = run("item.lines[0].amout if item.discount is defined else 0").unwrap_err();
        assert!(e.contains("amout"), "{e}");
    }

    #[test]
    fn attribute_of_null_says_so() {
        let e = run("item.vendor.name").unwrap_err();
        assert!(e.contains("`item.vendor` is null"), "{e}");
    }

    #[test]
    fn missing_secret_names_the_variable() {
        let e = run("secrets.API_KEY").unwrap_err();
        assert!(e.contains("SLUICE_SECRET_API_KEY"), "{e}");
        run("secrets.TOKEN").unwrap();
    }
}
