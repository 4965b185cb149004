//! Flow diagnostics: what is wrong, where, and how to fix it.
//!
//! Each [`Diagnostic`] names a file, line and column; [`render`] turns a list
//! of them into compiler-style text with the offending line underlined, using
//! miette's graphical renderer.

use std::fmt;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};
use serde::Serialize;

use super::source::Loc;

/// One problem in a flow file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Stable machine-readable code, e.g. `unknown-key`.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// Where (1-based line and column); `None` when the problem has no place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// 1-based column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// How many characters the offending text spans, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<usize>,
}

impl Diagnostic {
    /// A diagnostic at a location.
    pub fn at(code: &'static str, loc: Loc, message: impl Into<String>) -> Self {
        let known = loc.line > 0;
        Diagnostic {
            code,
            message: message.into(),
            line: known.then_some(loc.line),
            column: known.then_some(loc.column),
            hint: None,
            length: None,
        }
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{l}:{c}: {}", self.message)?,
            _ => write!(f, "{}", self.message)?,
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// A flow file that failed validation, with every problem found.
#[derive(Debug, Clone)]
pub struct FlowErrors {
    /// The file name shown in messages.
    pub file: String,
    /// The file's text.
    pub source: String,
    /// All problems, in source order.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for FlowErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render(&self.file, &self.source, &self.diagnostics, false))
    }
}

impl std::error::Error for FlowErrors {}

#[derive(Debug)]
struct Report<'a> {
    diag: &'a Diagnostic,
    src: NamedSource<String>,
    span: Option<SourceSpan>,
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diag.message)
    }
}

impl std::error::Error for Report<'_> {}

impl miette::Diagnostic for Report<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(self.diag.code))
    }
    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.diag
            .hint
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.span.map(|_| &self.src as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.span.map(|s| {
            Box::new(std::iter::once(LabeledSpan::new_with_span(
                Some("here".into()),
                s,
            ))) as Box<dyn Iterator<Item = LabeledSpan>>
        })
    }
}

/// Byte span of the token starting at `line:column` (1-based, characters).
fn span_at(source: &str, line: usize, column: usize) -> Option<SourceSpan> {
    let mut offset = 0;
    for (i, text) in source.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            let start = text
                .char_indices()
                .nth(column.saturating_sub(1))
                .map(|(b, _)| b)
                .unwrap_or(text.trim_end().len());
            let rest = &text[start..];
            let len = rest.find(['\n', '#', ',', '}', ']']).unwrap_or(rest.len());
            let len = rest[..len].trim_end().len().max(1).min(rest.len().max(1));
            return Some(SourceSpan::new((offset + start).into(), len));
        }
        offset += text.len();
    }
    None
}

/// Renders diagnostics as compiler-style text: `file:line:column`, the
/// message, the offending line underlined, and the hint.
pub fn render(file: &str, source: &str, diagnostics: &[Diagnostic], color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme).with_context_lines(1);
    let mut out = String::new();
    for d in diagnostics {
        let span = match (d.line, d.column) {
            (Some(l), Some(c)) => span_at(source, l, c).map(|s| match d.length {
                Some(len) => SourceSpan::new(s.offset().into(), len.max(1)),
                None => s,
            }),
            _ => None,
        };
        let header = match (d.line, d.column) {
            (Some(l), Some(c)) => format!("{file}:{l}:{c}: error[{}]: {}\n", d.code, d.message),
            _ => format!("{file}: error[{}]: {}\n", d.code, d.message),
        };
        out.push_str(&header);
        let report = Report {
            diag: d,
            src: NamedSource::new(file, source.to_string()),
            span,
        };
        let mut body = String::new();
        if handler.render_report(&mut body, &report).is_ok() {
            // The header above already says what is wrong: keep miette's
            // snippet and help, not its title line.
            let mut lines = body
                .lines()
                .skip_while(|l| !l.trim_start().starts_with('×'));
            lines.next();
            for line in lines {
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push('\n');
    }
    out
}

/// The closest candidate to `word`, if any is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
