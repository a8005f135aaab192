//! Whether an object the operator would apply is already what the API server stores, so
//! an unchanged object is never written again (issue 13 item 10: a NetworkPolicy applied
//! with `ingress: []`, which the server stores as absent, counted as a change on every
//! pass, and each write woke the controller again, about 20 times a second).

use serde_json::Value;

/// `desired` with the values the API server does not store removed: `null`, empty lists
/// and empty maps (a server-side apply of `ingress: []` leaves no `ingress` field).
pub fn as_stored(desired: &Value) -> Value {
    match desired {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), as_stored(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(as_stored).collect()),
        other => other.clone(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// Whether every field of `desired` (as the server would store it) has that value in
/// `stored`. Fields only `stored` has (server defaults, `status`, `metadata.uid`, other
/// managers' fields) do not count; lists must match item for item.
pub fn holds(stored: &Value, desired: &Value) -> bool {
    fn within(stored: &Value, desired: &Value) -> bool {
        match (stored, desired) {
            (Value::Object(s), Value::Object(d)) => {
                d.iter().all(|(k, v)| s.get(k).is_some_and(|sv| within(sv, v)))
            }
            (Value::Array(s), Value::Array(d)) => {
                s.len() == d.len() && s.iter().zip(d).all(|(s, d)| within(s, d))
            }
            (s, d) => s == d,
        }
    }
    within(stored, &as_stored(desired))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_lists_the_server_drops_are_not_a_change() {
        let desired = json!({"spec": {"ingress": [], "policyTypes": ["Ingress"], "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}});
        let stored = json!({"metadata": {"uid": "u", "resourceVersion": "7"},
            "spec": {"policyTypes": ["Ingress"], "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}});
        assert!(holds(&stored, &desired));
        let changed = json!({"spec": {"policyTypes": ["Ingress"], "egress": []}});
        assert!(!holds(&changed, &desired));
        assert!(!holds(&json!({}), &desired));
        let extra_rule = json!({"spec": {"policyTypes": ["Ingress", "Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}});
        assert!(!holds(&extra_rule, &desired), "lists match item for item");
    }
}
