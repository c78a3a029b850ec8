//! Shared pieces of the property tests: the case budget, arbitrary JSON.

use proptest::prelude::*;
use serde_json::Value;

/// The case budget: `default` cases, or `PROPTEST_CASES` when set. Failures are not written to
/// files: each one found becomes an explicit unit test.
pub fn proptest_config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value a few levels deep, with extra leaves from `strings`; object keys are often
/// one of `keys`.
pub fn any_json(
    keys: &'static [&'static str],
    strings: impl Strategy<Value = String> + Clone + 'static,
) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        strings.prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(key(keys), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

pub fn key(keys: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        3 => prop::sample::select(keys).prop_map(String::from),
        1 => any::<String>(),
    ]
}
