//! Requests and limits of the containers Sanctum adds to a pod (issue 13 item 8).
//!
//! In a namespace whose ResourceQuota covers `limits.cpu` (or `requests.memory`, …) the API
//! server refuses every pod with a container that does not set that resource ("must
//! specify limits.cpu for: fetch-jwt, sanctum-bridge, …"). So every container Sanctum adds
//! (`fetch-jwt`, `write-trat`, `sanctum-forwarder`, `sanctum-bridge`, and `git-clone` of
//! ScannerRun pods) has cpu and memory requests and limits. Three layers, each replacing
//! single values of the one below: the defaults here, the operator config
//! (`pod.sidecarResources`), and for webhook-injected pods the pod's annotation
//! `sanctum.dev/sidecar-resources`. Both have one shape, by container name:
//!
//! ```yaml
//! sanctum-bridge: {limits: {memory: 128Mi}}
//! fetch-jwt: {requests: {cpu: 20m}, limits: {cpu: 200m}}
//! ```
//!
//! Defaults, from the measured footprint (bridge ~5 MiB idle and ~15 MiB with 200 open
//! streams, forwarder ~7 MiB idle, both a few millicores; `write-trat` runs once and
//! exits; `fetch-jwt` is spiffe-helper, a Go daemon): see [`defaults`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};

use crate::names::{
    CONTAINER_BRIDGE, CONTAINER_FETCH_JWT, CONTAINER_FORWARDER, CONTAINER_WRITE_TRAT,
};

/// The init container that clones a `git` source into ScannerRun pods.
pub const CONTAINER_GIT_CLONE: &str = "git-clone";

/// The containers whose resources can be set, in the order the defaults list them.
pub const CONTAINERS: [&str; 5] = [
    CONTAINER_FETCH_JWT,
    CONTAINER_WRITE_TRAT,
    CONTAINER_FORWARDER,
    CONTAINER_BRIDGE,
    CONTAINER_GIT_CLONE,
];

/// The resource names that can be set.
const RESOURCES: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];

/// Requests and limits of one container: resource name → quantity (`"10m"`, `"64Mi"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Override {
    #[serde(deserialize_with = "quantities")]
    pub requests: BTreeMap<String, String>,
    #[serde(deserialize_with = "quantities")]
    pub limits: BTreeMap<String, String>,
}

/// A quantity as written: `cpu: 1` (a YAML number) or `cpu: "1"`.
#[derive(Deserialize)]
#[serde(untagged, expecting = "a quantity such as 100m or 64Mi")]
enum Written {
    Text(String),
    Integer(i64),
    Float(f64),
}

fn quantities<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let written = BTreeMap::<String, Written>::deserialize(d)?;
    Ok(written
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Written::Text(s) => s,
                Written::Integer(i) => i.to_string(),
                Written::Float(f) => f.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// Overrides by container name: the shape of `pod.sidecarResources` and of the annotation.
pub type Overrides = BTreeMap<String, Override>;

fn pair(cpu: &str, memory: &str) -> BTreeMap<String, String> {
    [("cpu".to_owned(), cpu.to_owned()), ("memory".to_owned(), memory.to_owned())].into()
}

/// The built-in requests and limits of each container of [`CONTAINERS`].
pub fn defaults() -> Overrides {
    let c = |requests: (&str, &str), limits: (&str, &str)| Override {
        requests: pair(requests.0, requests.1),
        limits: pair(limits.0, limits.1),
    };
    [
        (CONTAINER_FETCH_JWT, c(("10m", "16Mi"), ("100m", "64Mi"))),
        (CONTAINER_WRITE_TRAT, c(("10m", "8Mi"), ("100m", "32Mi"))),
        (CONTAINER_FORWARDER, c(("10m", "16Mi"), ("500m", "64Mi"))),
        (CONTAINER_BRIDGE, c(("10m", "16Mi"), ("500m", "64Mi"))),
        (CONTAINER_GIT_CLONE, c(("50m", "64Mi"), ("1", "1Gi"))),
    ]
    .into_iter()
    .map(|(name, r)| (name.to_owned(), r))
    .collect()
}

/// Whether `q` has the form of a Kubernetes quantity: a decimal number with an optional
/// binary (`Ki`…`Ei`) or decimal (`n u m k M G T P E`) suffix or exponent
/// (k8s.io/apimachinery/pkg/api/resource, `ParseQuantity`).
pub fn valid_quantity(q: &str) -> bool {
    let number_end = q
        .char_indices()
        .find(|&(i, ch)| !(ch.is_ascii_digit() || ch == '.' || (i == 0 && "+-".contains(ch))))
        .map_or(q.len(), |(i, _)| i);
    let (number, suffix) = q.split_at(number_end);
    let digits = number.trim_start_matches(['+', '-']);
    let number_ok = !digits.is_empty()
        && digits != "."
        && digits.matches('.').count() <= 1
        && digits.chars().any(|c| c.is_ascii_digit());
    let exponent = suffix.strip_prefix(['e', 'E']).is_some_and(|e| {
        let e = e.trim_start_matches(['+', '-']);
        !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
    });
    number_ok
        && (exponent
            || [
                "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E",
            ]
            .contains(&suffix))
}

/// Checks names and quantities; `Err` says which entry is wrong and what is allowed.
pub fn validate(overrides: &Overrides) -> Result<(), String> {
    for (container, o) in overrides {
        if !CONTAINERS.contains(&container.as_str()) {
            return Err(format!(
                "'{container}' is not a container Sanctum adds; use one of {}",
                CONTAINERS.join(", ")
            ));
        }
        for (kind, map) in [("requests", &o.requests), ("limits", &o.limits)] {
            for (resource, quantity) in map {
                if !RESOURCES.contains(&resource.as_str()) {
                    return Err(format!(
                        "{container}.{kind}.{resource}: only {} can be set",
                        RESOURCES.join(", ")
                    ));
                }
                if !valid_quantity(quantity) {
                    return Err(format!(
                        "{container}.{kind}.{resource}: '{quantity}' is not a quantity (e.g. 100m, 64Mi)"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The layers merged, lowest first: each later layer replaces single values.
pub fn merge(layers: &[&Overrides]) -> Overrides {
    let mut out = Overrides::new();
    for layer in layers {
        for (container, o) in *layer {
            let entry = out.entry(container.clone()).or_default();
            entry.requests.extend(o.requests.iter().map(|(k, v)| (k.clone(), v.clone())));
            entry.limits.extend(o.limits.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    out
}

/// The requirements in force: the defaults, then the operator config's overrides, then the
/// pod's (`None` for ScannerRun pods, which take the config alone).
pub fn effective(config: &Overrides, pod: Option<&Overrides>) -> Overrides {
    match pod {
        Some(pod) => merge(&[&defaults(), config, pod]),
        None => merge(&[&defaults(), config]),
    }
}

/// Reads the `sanctum.dev/sidecar-resources` annotation (YAML or JSON, the shape of
/// [`Overrides`]) and checks it.
pub fn parse_annotation(value: &str) -> Result<Overrides, String> {
    let overrides: Overrides = serde_yaml::from_str(value)
        .map_err(|e| format!("not a map of container name to {{requests, limits}}: {e}"))?;
    validate(&overrides)?;
    Ok(overrides)
}

/// The requirements of `container` in `merged` (`None` when it has no entry).
pub fn requirements(merged: &Overrides, container: &str) -> Option<ResourceRequirements> {
    let o = merged.get(container)?;
    let quantities = |m: &BTreeMap<String, String>| {
        (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), Quantity(v.clone()))).collect())
    };
    Some(ResourceRequirements {
        requests: quantities(&o.requests),
        limits: quantities(&o.limits),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["10m", "64Mi", "1", "0.5", "1e3", "2Gi", "+1", "1.5G", "100E-2"] {
            assert!(valid_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "64MB", "1.2.3", "ten", "1 Mi", "1e", "."] {
            assert!(!valid_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn every_default_has_cpu_and_memory_requests_and_limits() {
        let d = defaults();
        assert_eq!(d.keys().count(), CONTAINERS.len());
        for (name, o) in &d {
            for map in [&o.requests, &o.limits] {
                assert!(map.contains_key("cpu") && map.contains_key("memory"), "{name}");
            }
        }
        validate(&d).unwrap();
    }

    #[test]
    fn layers_replace_single_values() {
        let config = parse_annotation("sanctum-bridge: {limits: {memory: 128Mi}}").unwrap();
        let pod = parse_annotation(r#"{"sanctum-bridge": {"limits": {"cpu": "2"}}}"#).unwrap();
        let merged = merge(&[&defaults(), &config, &pod]);
        let bridge = &merged["sanctum-bridge"];
        assert_eq!(bridge.limits, pair("2", "128Mi"));
        assert_eq!(bridge.requests, pair("10m", "16Mi"));
        assert_eq!(merged["write-trat"], defaults()["write-trat"]);
    }

    #[test]
    fn bad_entries_are_explained() {
        let e = parse_annotation("scanner: {limits: {cpu: 1}}").unwrap_err();
        assert!(e.contains("'scanner' is not a container Sanctum adds"), "{e}");
        let e = parse_annotation("sanctum-bridge: {limits: {gpu: 1}}").unwrap_err();
        assert!(e.contains("sanctum-bridge.limits.gpu: only cpu, memory"), "{e}");
        let ok = parse_annotation("sanctum-bridge: {limits: {cpu: 1, memory: 0.5Gi}}").unwrap();
        assert_eq!(ok["sanctum-bridge"].limits, pair("1", "0.5Gi"));
        let e = parse_annotation("sanctum-bridge: {limits: {cpu: [1]}}").unwrap_err();
        assert!(e.contains("a quantity such as 100m or 64Mi"), "{e}");
        let e = parse_annotation("sanctum-bridge: {limits: {memory: 64MB}}").unwrap_err();
        assert!(e.contains("'64MB' is not a quantity"), "{e}");
        let e = parse_annotation("[1, 2]").unwrap_err();
        assert!(e.contains("not a map"), "{e}");
    }
}
