//! Property tests: filters print and parse back; no input makes a parser panic.

use proptest::prelude::*;
use scim::filter::{AttrPath, CompareOp, Filter, PatchPath};
use scim::schema::USER_TYPE;
use serde_json::{Value, json};

fn path() -> impl Strategy<Value = AttrPath> {
    ("[a-zA-Z][a-zA-Z0-9_-]{0,8}", proptest::option::of("[a-zA-Z][a-zA-Z0-9]{0,5}")).prop_map(|(name, sub)| AttrPath {
        uri: None,
        name,
        sub,
    })
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        "\\PC{0,12}".prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|n| json!(n)),
        Just(Value::Null),
    ]
}

fn op() -> impl Strategy<Value = CompareOp> {
    prop_oneof![
        Just(CompareOp::Eq),
        Just(CompareOp::Ne),
        Just(CompareOp::Co),
        Just(CompareOp::Sw),
        Just(CompareOp::Ew),
        Just(CompareOp::Gt),
        Just(CompareOp::Ge),
        Just(CompareOp::Lt),
        Just(CompareOp::Le),
    ]
}

fn leaf() -> impl Strategy<Value = Filter> {
    prop_oneof![
        (path(), op(), value()).prop_map(|(p, o, v)| Filter::Compare(p, o, v)),
        path().prop_map(Filter::Present),
    ]
}

fn filter() -> impl Strategy<Value = Filter> {
    leaf().prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Filter::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Filter::Or(Box::new(a), Box::new(b))),
            inner.prop_map(|a| Filter::Not(Box::new(a))),
        ]
    })
}

proptest! {
    #[test]
    fn filters_round_trip(f in filter()) {
        let text = f.to_string();
        let back = Filter::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(back, f);
    }

    #[test]
    fn filter_parser_never_panics(s in prop_oneof!["[a-zA-Zéü東😀 .()\\[\\]\"\\\\:0-9-]{0,60}", "\\PC{0,60}"]) {
        if let Ok(f) = Filter::parse(&s) {
            let _ = f.matches(&USER_TYPE, &json!({"userName": "x", "emails": [{"value": "y"}]}));
        }
    }

    #[test]
    fn patch_paths_never_panic(s in prop_oneof!["[a-zA-Zéü東😀 .()\\[\\]\"\\\\:0-9-]{0,40}", "\\PC{0,40}"]) {
        let _ = PatchPath::parse(&s);
    }

    /// `sortBy` and `attributes` are attribute paths.
    #[test]
    fn attribute_paths_never_panic(s in prop_oneof!["(urn|URN|[a-zé東])[a-zA-Zéü東😀:.0-9-]{0,30}", "\\PC{0,30}"]) {
        let _ = AttrPath::parse(&s);
    }
}

/// Found by a review: a multi-byte character inside the first four bytes
/// was sliced at a byte offset.
#[test]
fn non_ascii_near_the_start_is_an_error_not_a_panic() {
    for text in ["abcé pr", "é", "urné:x", "ur\u{e9}:a", "東京 eq \"x\"", "userName eq \"é\" and é pr", "😀"] {
        let _ = Filter::parse(text);
        let _ = AttrPath::parse(text);
        let _ = PatchPath::parse(text);
    }
    assert!(Filter::parse("abcé pr").is_err(), "not a valid attribute name");
}
