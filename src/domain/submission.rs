//! A validated submission: what `POST /tasks/submit` and a message published straight to the
//! exchange both carry. Every input limit is enforced here, before anything touches storage.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{TaskId, TopicName, WorkerId};

/// Input limits (configurable; see `config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_id_length: usize,
    pub max_variables: usize,
    pub max_depth: usize,
    pub max_string_length: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // 1 000 variables: the seed's workers submit every process variable, and real processes
        // carry hundreds; the body limit (1 MiB) still bounds the whole.
        Self { max_id_length: 128, max_variables: 1_000, max_depth: 10, max_string_length: 65_536 }
    }
}

/// One offending field, as listed in a validation error's `details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON path of the field, e.g. `variables.customer.name`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// A submission whose every part has been checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub task_id: TaskId,
    pub worker_id: WorkerId,
    pub topic: TopicName,
    pub variables: Map<String, Value>,
}

impl Submission {
    /// Validates a JSON body, reporting every offending field rather than the first.
    pub fn parse(body: &Value, limits: &Limits) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let Some(obj) = body.as_object() else {
            return Err(vec![FieldError::new("body", "must be a JSON object")]);
        };
        // Unknown top-level fields are ignored, as the seed's model did: its workers may send extras.
        let task_id = id_field(obj, "task_id", &mut errors, |s| TaskId::parse(s, limits.max_id_length));
        let worker_id = id_field(obj, "worker_id", &mut errors, |s| WorkerId::parse(s, limits.max_id_length));
        let topic = id_field(obj, "topic", &mut errors, |s| TopicName::parse(s, limits.max_id_length));
        let variables = match obj.get("variables") {
            None | Some(Value::Null) => Some(Map::new()),
            Some(Value::Object(vars)) => {
                if vars.len() > limits.max_variables {
                    errors.push(FieldError::new(
                        "variables",
                        format!("at most {} variables (got {})", limits.max_variables, vars.len()),
                    ));
                }
                for (name, value) in vars {
                    check_value(&format!("variables.{name}"), name, value, 1, limits, &mut errors);
                }
                Some(vars.clone())
            }
            Some(other) => {
                errors.push(FieldError::new("variables", format!("must be an object, got {}", kind(other))));
                None
            }
        };
        match (task_id, worker_id, topic, variables) {
            (Some(task_id), Some(worker_id), Some(topic), Some(variables)) if errors.is_empty() => {
                Ok(Self { task_id, worker_id, topic, variables })
            }
            _ => Err(errors),
        }
    }

    /// A stable digest of everything but the id: equal digests mean an idempotent resubmit.
    /// Keys are sorted first: a dependency turns on serde_json's insertion-ordered maps.
    pub fn fingerprint(&self) -> String {
        let canonical = sorted(&serde_json::json!({
            "worker_id": self.worker_id.as_str(),
            "topic": self.topic.as_str(),
            "variables": self.variables,
        }));
        hex(&Sha256::digest(canonical.to_string().as_bytes()))
    }

    /// The wire form, as the seed's workers publish it.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "task_id": self.task_id.as_str(),
            "worker_id": self.worker_id.as_str(),
            "topic": self.topic.as_str(),
            "variables": self.variables,
        })
    }
}

/// The same value with every object's keys in sorted order.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn id_field<T, E: std::fmt::Display>(
    obj: &Map<String, Value>,
    name: &str,
    errors: &mut Vec<FieldError>,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Option<T> {
    match obj.get(name) {
        None | Some(Value::Null) => {
            errors.push(FieldError::new(name, "is required"));
            None
        }
        Some(Value::String(s)) => parse(s).map_err(|e| errors.push(FieldError::new(name, e.to_string()))).ok(),
        Some(other) => {
            errors.push(FieldError::new(name, format!("must be a string, got {}", kind(other))));
            None
        }
    }
}

/// MongoDB cannot store keys that start with `$`, contain `.`, or contain NUL.
fn key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        Some("must not be empty")
    } else if key.starts_with('$') {
        Some("must not start with '$'")
    } else if key.contains('.') {
        Some("must not contain '.'")
    } else if key.contains('\0') {
        Some("must not contain NUL")
    } else {
        None
    }
}

fn check_value(path: &str, key: &str, value: &Value, depth: usize, limits: &Limits, errors: &mut Vec<FieldError>) {
    if let Some(problem) = key_problem(key) {
        errors.push(FieldError::new(path, format!("name {problem}")));
    }
    if key.chars().count() > limits.max_string_length {
        errors.push(FieldError::new(path, "name is too long"));
    }
    match value {
        Value::String(s) if s.chars().count() > limits.max_string_length => {
            errors.push(FieldError::new(path, format!("string longer than {} characters", limits.max_string_length)))
        }
        Value::Object(_) | Value::Array(_) if depth > limits.max_depth => {
            errors.push(FieldError::new(path, format!("nested deeper than {} levels", limits.max_depth)));
        }
        Value::Object(map) => {
            for (k, v) in map {
                check_value(&format!("{path}.{k}"), k, v, depth + 1, limits, errors);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                // Array positions are not keys: pass a harmless name.
                check_value(&format!("{path}[{i}]"), "item", v, depth + 1, limits, errors);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Submission, Vec<FieldError>> {
        Submission::parse(&v, &Limits::default())
    }

    fn fields(r: Result<Submission, Vec<FieldError>>) -> Vec<String> {
        r.err().unwrap_or_default().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_seed_style_body_parses() {
        let s = parse(json!({"task_id": "t1", "worker_id": "w1", "topic": "say_hello", "variables": {"name": "Ana"}}));
        assert_eq!(s.map(|s| s.variables["name"].clone()).ok(), Some(json!("Ana")));
    }

    #[test]
    fn every_missing_or_mistyped_field_is_listed() {
        assert_eq!(
            fields(parse(json!({"task_id": 5, "variables": []}))),
            ["task_id", "worker_id", "topic", "variables"]
        );
    }

    #[test]
    fn names_mongodb_cannot_store_are_refused_at_any_depth() {
        let r = parse(json!({"task_id": "t", "worker_id": "w", "topic": "x",
            "variables": {"$set": 1, "a.b": 2, "ok": {"in\u{0}ner": 3}}}));
        assert_eq!(fields(r), ["variables.$set", "variables.a.b", "variables.ok.in\u{0}ner"]);
    }

    #[test]
    fn depth_count_and_length_limits_apply() {
        let limits = Limits { max_id_length: 8, max_variables: 2, max_depth: 2, max_string_length: 4 };
        let body = json!({"task_id": "t", "worker_id": "w", "topic": "x",
            "variables": {"a": "12345", "b": {"c": {"d": {"e": 1}}}, "e": 1}});
        let errs = Submission::parse(&body, &limits).err().unwrap_or_default();
        let msgs: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(msgs, ["variables", "variables.a", "variables.b.c.d"]);
    }

    #[test]
    fn fingerprint_ignores_the_id_and_key_order() {
        let a = parse(json!({"task_id": "t1", "worker_id": "w", "topic": "x", "variables": {"a": 1, "b": 2}}));
        let b = parse(json!({"variables": {"b": 2, "a": 1}, "topic": "x", "worker_id": "w", "task_id": "t2"}));
        let c = parse(json!({"task_id": "t1", "worker_id": "w", "topic": "x", "variables": {"a": 1, "b": 3}}));
        let fp = |r: Result<Submission, _>| r.map(|s| s.fingerprint()).ok();
        assert_eq!(fp(a.clone()), fp(b));
        assert_ne!(fp(a), fp(c));
    }
}
