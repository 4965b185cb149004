//! Secrets: read from `SLUICE_SECRET_<NAME>` variables, never stored or logged.
//! Credentials entered in the console are stored sealed (see
//! `connectors::vault`) and added here once opened ([`Secrets::add_stored`]):
//! connections find them with [`Secrets::lookup`], and redaction covers
//! them, but expressions do not see them.
//!
//! Expressions see the variables as `secrets.<NAME>`. Every output, error and log line
//! the engine stores or prints passes through [`Secrets::redact`], which
//! replaces each secret value with `[REDACTED]`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

/// The prefix of environment variables that hold secrets.
pub const ENV_PREFIX: &str = "SLUICE_SECRET_";
/// What a secret value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Named secret values.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    values: Arc<BTreeMap<String, String>>,
    /// Opened stored credentials, shared by every clone.
    stored: Arc<RwLock<BTreeMap<String, String>>>,
}

impl Secrets {
    /// Reads every `SLUICE_SECRET_<NAME>` variable of this process.
    pub fn from_env() -> Secrets {
        Secrets::from_pairs(
            std::env::vars()
                .filter_map(|(k, v)| k.strip_prefix(ENV_PREFIX).map(|name| (name.to_string(), v))),
        )
    }

    /// Secrets from explicit pairs.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Secrets {
        Secrets {
            values: Arc::new(pairs.into_iter().collect()),
            stored: Arc::default(),
        }
    }

    /// Adds an opened stored credential (seen by every clone).
    pub fn add_stored(&self, name: &str, value: &str) {
        self.stored
            .write()
            .expect("stored secrets lock")
            .insert(name.to_string(), value.to_string());
    }

    /// A secret a connection names: a variable's or a stored credential's.
    pub fn lookup(&self, name: &str) -> Option<String> {
        match self.values.get(name) {
            Some(v) => Some(v.clone()),
            None => self
                .stored
                .read()
                .expect("stored secrets lock")
                .get(name)
                .cloned(),
        }
    }

    /// The names of the secrets.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// One secret's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The secrets as an expression value.
    pub fn to_value(&self) -> minijinja::Value {
        minijinja::Value::from((*self.values).clone())
    }

    /// Whether there are no secrets (redaction is then free).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.stored.read().expect("stored secrets lock").is_empty()
    }

    /// Text with every secret value replaced by `[REDACTED]`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        let stored = self.stored.read().expect("stored secrets lock");
        for v in self
            .values
            .values()
            .chain(stored.values())
            .filter(|v| v.len() >= 3)
        {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), REDACTED);
            }
        }
        out
    }

    /// A JSON value with every secret value inside strings (and keys) replaced.
    pub fn redact_json(&self, value: &Value) -> Value {
        if self.is_empty() {
            return value.clone();
        }
        match value {
            Value::String(s) => Value::String(self.redact(s)),
            Value::Array(a) => Value::Array(a.iter().map(|v| self.redact_json(v)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| (self.redact(k), self.redact_json(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redact_replaces_every_occurrence_in_nested_json() {
        let s = Secrets::from_pairs([("API_KEY".to_string(), "s3cr3t-value".to_string())]);
        let v = s.redact_json(&json!({"h": "Bearer s3cr3t-value", "l": ["s3cr3t-value", 1]}));
        assert_eq!(v, json!({"h": "Bearer [REDACTED]", "l": ["[REDACTED]", 1]}));
        assert_eq!(s.redact("error near s3cr3t-value"), "error near [REDACTED]");
    }
}
