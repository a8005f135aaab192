//! Golden tests of the objects built for the examples, the CRD drift check, and the TraT in
//! the Secret verified against the JWKS. Regenerate golden files with `UPDATE_GOLDEN=1`.

mod support;
use support::{check_golden, root};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use sanctum_common::TratClaims;
use sanctum_operator::config::OperatorConfig;
use sanctum_operator::render::render;
use sanctum_operator::tokens::Signer;

const NOW: u64 = 1_790_000_000;

/// A fixed key (a test fixture, used nowhere else) so the golden output is stable.
fn signer() -> Signer {
    Signer::load(&root().join("operator/tests/fixtures/test-signing-key.pem")).unwrap()
}

fn documents(yaml: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .collect()
}

/// A single-tenant install: every namespace bills `acme` (the examples' org), and the
/// git example's gateway is allowed.
fn config() -> OperatorConfig {
    OperatorConfig::parse(
        "tenancy: {defaultOrg: acme}\ngateway: {allowedUrls: ['https://gateway.example.org:8443']}\n",
        "c.yaml".as_ref(),
    )
    .unwrap()
}

fn render_example(file: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(root().join("examples").join(file)).unwrap();
    let (out, skipped) = render(&text, &config(), &signer(), NOW).unwrap();
    assert!(skipped.is_empty());
    documents(&out)
}

#[test]
fn crd_matches_checked_in_file() {
    let generated = sanctum_operator::crd::crd_yaml().unwrap();
    for file in ["crds/scannerrun.yaml", "charts/sanctum/crds/scannerrun.yaml"] {
        let checked_in = std::fs::read_to_string(root().join(file)).unwrap();
        assert!(
            generated == checked_in,
            "{file} drifted from operator/src/crd.rs: run `cargo run -p sanctum-operator -- crd > {file}`"
        );
    }
}

#[test]
fn golden_objects_of_examples() {
    for (example, golden) in
        [("scannerrun.yaml", "scannerrun"), ("scannerrun-git.yaml", "scannerrun-git")]
    {
        let docs = render_example(example);
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["Pod", "Secret", "NetworkPolicy"], "{example}");
        // The Secret holds a signature, checked below rather than byte for byte.
        check_golden(&format!("{golden}.pod.yaml"), &serde_yaml::to_string(&docs[0]).unwrap());
        check_golden(
            &format!("{golden}.networkpolicy.yaml"),
            &serde_yaml::to_string(&docs[2]).unwrap(),
        );
    }
}

#[test]
fn trat_in_secret_verifies_against_jwks() {
    let docs = render_example("scannerrun-git.yaml");
    let secret: Secret = serde_yaml::from_value(docs[1].clone()).unwrap();
    let data = secret.data.unwrap();
    let token = String::from_utf8(data["trat.jwt"].0.clone()).unwrap();
    let helper = String::from_utf8(data["spiffe-helper.conf"].0.clone()).unwrap();
    assert!(helper.contains(r#"jwt_audience = "sanctum-gateway""#), "{helper}");

    let jwks: JwkSet = serde_json::from_value(signer().jwks()).unwrap();
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["sanctum-gateway"]);
    validation.validate_exp = false; // NOW is fixed in the past of whoever runs this.
    let claims = jsonwebtoken::decode::<TratClaims>(
        &token,
        &DecodingKey::from_jwk(jwks.find(&kid).unwrap()).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    let pod: Pod = serde_yaml::from_value(docs[0].clone()).unwrap();
    let run_id = &pod.metadata.labels.as_ref().unwrap()["sanctum.dev/run-id"];
    assert_eq!(claims.sub, format!("spiffe://prod.example.org/scanner/{run_id}"));
    assert_eq!(&claims.txn, run_id);
    assert_eq!(claims.scope, "llm.messages");
    assert_eq!(claims.tctx.org_id, "acme");
    assert_eq!(claims.tctx.run_id, "scan-run/audit-libfoo");
    assert_eq!(claims.tctx.repo.as_deref(), Some("https://github.com/example/libfoo.git"));
    assert_eq!(claims.tctx.namespace.as_deref(), Some("scan-run"));
    assert_eq!(claims.tctx.pod_name.as_ref(), pod.metadata.name.as_ref());
    assert_eq!(claims.iat, NOW);
    // timeout (default 3600) plus the margin (600).
    assert_eq!(claims.exp, NOW + 3600 + 600);
}

#[test]
fn real_key_in_spec_never_reaches_the_pod() {
    let docs = render_example("scannerrun-git.yaml");
    let all = serde_yaml::to_string(&docs).unwrap();
    assert!(!all.contains("sk-ant-must-never-reach-the-pod"));
}

#[test]
fn bad_documents_name_the_document_and_field() {
    let cases = [
        (
            "apiVersion: sanctum.dev/v1alpha1\nkind: ScannerRun\nmetadata: {name: x}\nspec: {orgId: a, source: {volume: {claimName: c}}}\n",
            "document 1 (ScannerRun x): spec: missing field `image`",
        ),
        (
            "---\nkind: ConfigMap\napiVersion: v1\n---\napiVersion: sanctum.dev/v1alpha1\nkind: ScannerRun\nmetadata: {name: y}\nspec: {image: a, orgId: a, source: {volume: {claimName: c}}, timeoutSeconds: soon}\n",
            "document 2 (ScannerRun y): spec.timeoutSeconds: invalid type",
        ),
        (
            "apiVersion: sanctum.dev/v1alpha1\nkind: ScannerRun\nmetadata: {name: z}\nspec: {image: a, orgId: a, source: {}}\n",
            "document 1 (ScannerRun z): spec.source: set exactly one of git or volume",
        ),
        (
            "apiVersion: sanctum.dev/v1alpha1\nkind: ScannerRun\nmetadata: {name: w}\nspec: {image: 'Bad Image', orgId: a, source: {volume: {claimName: c}}}\n",
            "document 1 (ScannerRun w): spec.image 'Bad Image' is not a valid image reference",
        ),
        (
            "apiVersion: sanctum.dev/v1alpha1\nkind: ScannerRun\nmetadata: {name: v}\nspec: {image: a, orgId: a, source: {volume: {claimName: c}}, identity: {source: magic}}\n",
            "document 1 (ScannerRun v): spec.identity.source: unknown variant `magic`",
        ),
        ("a: [unclosed\n", "document 1: not YAML"),
        (
            "apiVersion: sanctum.dev/v1alpha1\nkind: ScannerRun\nmetadata: {name: u, namespace: team-a}\nspec: {image: a, orgId: bigcorp, source: {volume: {claimName: c}}}\n",
            "document 1 (ScannerRun u): namespace team-a may bill org acme, not 'bigcorp'",
        ),
    ];
    for (text, expected) in cases {
        let err = render(text, &config(), &signer(), NOW).unwrap_err().to_string();
        assert!(err.starts_with(expected), "expected {expected:?}, got {err:?}");
        assert!(!err.contains('\n'), "one line: {err:?}");
    }
}
