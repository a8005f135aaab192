//! "Everything injection sets is in the pod": whether one JSON value is contained in another.
//! Objects may carry extra keys (the API server's defaults); arrays must have the same
//! length and match element by element (nothing added, removed or reordered); scalars are
//! equal. Used to tell a pod Sanctum injected from one that only carries the mark.

use serde_json::Value;

/// The JSON pointer-like path (`.initContainers[0].image`) of the first place where
/// `expected` is not contained in `actual`, or `None` when it is.
pub fn first_difference(expected: &Value, actual: &Value) -> Option<String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().find_map(|(key, value)| {
            let field = format!(".{key}");
            match a.get(key) {
                Some(other) => first_difference(value, other).map(|rest| field + &rest),
                // An absent key and an empty value mean the same to the API server.
                None if is_empty(value) => None,
                None => Some(field),
            }
        }),
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Some(String::new());
            }
            e.iter().zip(a).enumerate().find_map(|(i, (x, y))| {
                let at = x
                    .get("name")
                    .and_then(Value::as_str)
                    .map_or_else(|| i.to_string(), str::to_owned);
                first_difference(x, y).map(|rest| format!("[{at}]{rest}"))
            })
        }
        (e, a) if e == a => None,
        (e, Value::Null) if is_empty(e) => None,
        _ => Some(String::new()),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_may_be_added_but_nothing_swapped_or_appended() {
        let expected = json!({"c": [{"name": "b", "image": "x", "args": ["1"]}], "v": {}});
        let defaulted = json!({"c": [{"name": "b", "image": "x", "args": ["1"], "tmp": "/dev"}]});
        assert_eq!(first_difference(&expected, &defaulted), None);
        let swapped = json!({"c": [{"name": "b", "image": "evil", "args": ["1"]}]});
        assert_eq!(first_difference(&expected, &swapped).as_deref(), Some(".c[b].image"));
        let appended = json!({"c": [{"name": "b", "image": "x", "args": ["1", "2"]}]});
        assert_eq!(first_difference(&expected, &appended).as_deref(), Some(".c[b].args"));
        let missing = json!({"c": [{"name": "b", "args": ["1"]}]});
        assert_eq!(first_difference(&expected, &missing).as_deref(), Some(".c[b].image"));
    }
}
