//! Typed-variable conversion between the gateway's plain JSON and Camunda's
//! `{value, type, valueInfo}` form, in both directions.
//!
//! To Camunda: strings → String (or Date when written exactly in Camunda's date format,
//! `yyyy-MM-dd'T'HH:mm:ss.SSS+hhmm`), booleans → Boolean, integers → Integer within i32 and Long
//! beyond, other numbers → Double, null → Null. Objects and arrays depend on the topic's
//! [`JsonVariables`]: by default `Object` serialized as `application/json` with a Java map or list
//! type (what the engine makes of the seed's Python workers' untyped dicts and lists), so a BPMN
//! expression reads `${var.field}` and `${var[0]}`; with `spin`, Spin `Json`.
//! From Camunda: each type back to its JSON value; Json and serialized-JSON Object values are
//! parsed back into JSON; Date stays a string in Camunda's format.

use serde_json::{Map, Value, json};

use crate::topics::JsonVariables;

/// The Java type a JSON object is declared as: a map Jackson fills from any JSON object, keeping
/// the keys' order, and the type the engine itself picks for a seed worker's untyped dict. JUEL's
/// map resolver makes `${var.field}` a map lookup.
const OBJECT_TYPE: &str = "java.util.LinkedHashMap";
/// The Java type a JSON array is declared as. Without an element type Jackson builds each element
/// by its JSON shape, so mixed lists come through; `${var[0]}` indexes it.
const LIST_TYPE: &str = "java.util.ArrayList";

/// True for Camunda's own date format (and only it), e.g. `2024-01-02T03:04:05.000+0000`.
pub fn is_camunda_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 28 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && matches!(b[23], b'+' | b'-')
        && digits(24..28)
}

/// One value in Camunda's typed form; `json` says how objects and arrays are typed.
pub fn to_typed(value: &Value, json: JsonVariables) -> Value {
    match value {
        Value::Null => json!({"value": null, "type": "Null"}),
        Value::Bool(b) => json!({"value": b, "type": "Boolean"}),
        Value::Number(n) => match n.as_i64() {
            Some(i) if i32::try_from(i).is_ok() => json!({"value": i, "type": "Integer"}),
            Some(i) => json!({"value": i, "type": "Long"}),
            None => match n.as_u64() {
                // Beyond i64: Camunda has no wider integer; Double keeps the magnitude.
                Some(u) => json!({"value": u as f64, "type": "Double"}),
                None => json!({"value": n, "type": "Double"}),
            },
        },
        Value::String(s) if is_camunda_date(s) => json!({"value": s, "type": "Date"}),
        Value::String(s) => json!({"value": s, "type": "String"}),
        Value::Array(_) | Value::Object(_) => match json {
            JsonVariables::Spin => json!({"value": value.to_string(), "type": "Json"}),
            JsonVariables::Object => {
                let java_type = if value.is_array() { LIST_TYPE } else { OBJECT_TYPE };
                json!({"value": value.to_string(), "type": "Object", "valueInfo": {
                    "objectTypeName": java_type, "serializationDataFormat": "application/json"}})
            }
        },
    }
}

/// A variables map in Camunda's typed form; `json` says how objects and arrays are typed.
pub fn to_typed_map(vars: &Map<String, Value>, json: JsonVariables) -> Map<String, Value> {
    vars.iter().map(|(k, v)| (k.clone(), to_typed(v, json))).collect()
}

/// One typed value back to plain JSON.
pub fn from_typed(typed: &Value) -> Value {
    let value = typed.get("value").cloned().unwrap_or(Value::Null);
    let kind = typed.get("type").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
    match kind.as_str() {
        "json" => match &value {
            Value::String(s) => serde_json::from_str(s).unwrap_or(value),
            _ => value,
        },
        "object" => {
            let format = typed.pointer("/valueInfo/serializationDataFormat").and_then(Value::as_str).unwrap_or("");
            match &value {
                Value::String(s) if format.contains("json") => serde_json::from_str(s).unwrap_or(value),
                _ => value,
            }
        }
        _ => value,
    }
}

/// A typed variables map (as fetchAndLock returns it) back to plain JSON.
pub fn from_typed_map(vars: &Map<String, Value>) -> Map<String, Value> {
    vars.iter().map(|(k, v)| (k.clone(), from_typed(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OBJECT: JsonVariables = JsonVariables::Object;

    #[test]
    fn numbers_pick_integer_long_or_double_by_range() {
        assert_eq!(to_typed(&json!(7), OBJECT)["type"], "Integer");
        assert_eq!(to_typed(&json!(2_147_483_648_i64), OBJECT)["type"], "Long");
        assert_eq!(to_typed(&json!(-2_147_483_649_i64), OBJECT)["type"], "Long");
        assert_eq!(to_typed(&json!(0.25), OBJECT)["type"], "Double");
        assert_eq!(to_typed(&json!(u64::MAX), OBJECT)["type"], "Double");
    }

    #[test]
    fn by_default_objects_and_arrays_are_json_serialized_java_maps_and_lists() {
        let object = json!({"numero_processo": "1", "partes": [1, {"b": null}]});
        let typed = to_typed(&object, OBJECT);
        assert_eq!(typed["type"], "Object");
        assert_eq!(
            typed["valueInfo"],
            json!({"objectTypeName": "java.util.LinkedHashMap", "serializationDataFormat": "application/json"})
        );
        assert!(typed["value"].is_string(), "the JSON travels as text");
        assert_eq!(from_typed(&typed), object);

        let array = json!(["x", 1, {"y": true}]);
        let typed = to_typed(&array, OBJECT);
        assert_eq!(
            (typed["type"].as_str(), typed["valueInfo"]["objectTypeName"].as_str()),
            (Some("Object"), Some("java.util.ArrayList"))
        );
        assert_eq!(from_typed(&typed), array);
    }

    #[test]
    fn in_spin_mode_objects_and_arrays_are_json_and_come_back() {
        for v in [json!({"a": [1, {"b": null}]}), json!([1, "two"])] {
            let typed = to_typed(&v, JsonVariables::Spin);
            assert_eq!(typed["type"], "Json");
            assert!(typed["value"].is_string() && typed.get("valueInfo").is_none(), "{typed}");
            assert_eq!(from_typed(&typed), v);
        }
    }

    #[test]
    fn the_mode_changes_only_objects_and_arrays() {
        let vars = json!({"s": "x", "i": 1, "n": null, "o": {}, "a": []});
        let vars = vars.as_object().expect("an object literal");
        let (object, spin) = (to_typed_map(vars, OBJECT), to_typed_map(vars, JsonVariables::Spin));
        for key in ["s", "i", "n"] {
            assert_eq!(object[key], spin[key], "{key}");
        }
        assert_eq!((object["o"]["type"].as_str(), spin["o"]["type"].as_str()), (Some("Object"), Some("Json")));
        assert_eq!((object["a"]["type"].as_str(), spin["a"]["type"].as_str()), (Some("Object"), Some("Json")));
    }

    #[test]
    fn only_camundas_exact_date_format_becomes_a_date() {
        assert_eq!(to_typed(&json!("2024-01-02T03:04:05.000+0000"), OBJECT)["type"], "Date");
        assert_eq!(to_typed(&json!("2024-01-02T03:04:05.000Z"), OBJECT)["type"], "String");
        assert_eq!(to_typed(&json!("2024-01-02"), OBJECT)["type"], "String");
    }

    #[test]
    fn typed_values_read_back() {
        assert_eq!(from_typed(&json!({"type": "Boolean", "value": true})), json!(true));
        assert_eq!(from_typed(&json!({"type": "Null", "value": null})), Value::Null);
        let object = json!({"type": "Object", "value": "{\"x\":1}",
            "valueInfo": {"objectTypeName": "java.util.HashMap", "serializationDataFormat": "application/json"}});
        assert_eq!(from_typed(&object), json!({"x": 1}));
        assert_eq!(
            from_typed(&json!({"type": "Date", "value": "2024-01-02T03:04:05.000+0000"})),
            json!("2024-01-02T03:04:05.000+0000")
        );
    }
}
