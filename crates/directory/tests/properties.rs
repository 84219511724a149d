//! Property tests: printing then parsing a DN, a filter or an LDIF entry gives it back.

use directory::dn::{Ava, Dn, Rdn, RdnValue};
use directory::filter::Filter;
use directory::ldif::{LdifReader, LdifRecord, LdifWriter};
use directory::{Entry, Value};
use proptest::prelude::*;

fn attr_type() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z][a-zA-Z0-9-]{0,10}", "[1-9][0-9]{0,3}(\\.[0-9]{1,4}){1,4}"]
}

fn ava() -> impl Strategy<Value = Ava> {
    (
        attr_type(),
        prop_oneof![
            "\\PC{1,20}".prop_map(RdnValue::Text),
            "[ ,+\"\\\\<>;#=a-z]{1,12}".prop_map(RdnValue::Text),
            proptest::collection::vec(any::<u8>(), 1..8).prop_map(RdnValue::Ber),
        ],
    )
        .prop_map(|(attr, value)| Ava { attr, value })
}

fn dn() -> impl Strategy<Value = Dn> {
    proptest::collection::vec(proptest::collection::vec(ava(), 1..3), 0..5)
        .prop_map(|rdns| Dn::from_rdns(rdns.into_iter().filter_map(Rdn::from_avas).collect()))
}

fn leaf() -> impl Strategy<Value = Filter> {
    let attr = "[a-zA-Z][a-zA-Z0-9-]{0,8}";
    let val = proptest::collection::vec(any::<u8>(), 0..10);
    let nonempty = proptest::collection::vec(any::<u8>(), 1..6);
    prop_oneof![
        (attr, val.clone()).prop_map(|(a, v)| Filter::Equality(a, v)),
        (attr, val.clone()).prop_map(|(a, v)| Filter::GreaterOrEqual(a, v)),
        (attr, val.clone()).prop_map(|(a, v)| Filter::LessOrEqual(a, v)),
        (attr, val).prop_map(|(a, v)| Filter::Approx(a, v)),
        attr.prop_map(Filter::Present),
        (
            attr,
            proptest::option::of(nonempty.clone()),
            proptest::collection::vec(nonempty.clone(), 0..3),
            proptest::option::of(nonempty)
        )
            .prop_filter("not a presence filter", |(_, i, a, l)| i.is_some() || !a.is_empty() || l.is_some())
            .prop_map(|(attr, initial, any, last)| Filter::Substrings { attr, initial, any, last }),
    ]
}

fn filter() -> impl Strategy<Value = Filter> {
    leaf().prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Filter::And),
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Filter::Or),
            inner.prop_map(|f| Filter::Not(Box::new(f))),
        ]
    })
}

proptest! {
    #[test]
    fn dn_round_trips(d in dn()) {
        let text = d.to_string();
        let back = Dn::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &d);
        prop_assert_eq!(back.to_string(), text);
    }

    #[test]
    fn dn_parse_never_panics(s in "\\PC{0,40}") {
        let _ = Dn::parse(&s);
    }

    #[test]
    fn filter_round_trips(f in filter()) {
        let text = f.to_string();
        let back = Filter::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, f);
    }

    #[test]
    fn filter_parse_never_panics(s in prop_oneof!["[()&|!=*~<>\\\\a-z0-9:é東😀]{0,40}", "\\PC{0,40}"]) {
        let _ = Filter::parse(&s);
    }

    #[test]
    fn ldif_entry_round_trips(values in proptest::collection::vec("\\PC{0,90}", 1..5), bin in proptest::collection::vec(any::<u8>(), 0..40)) {
        let mut e = Entry::new(Dn::parse("cn=x,dc=example,dc=org").map_err(|e| TestCaseError::fail(e.to_string()))?);
        for v in &values {
            e.add("description", v.as_str());
        }
        e.add("jpegPhoto", Value::Binary(bin));
        let mut w = LdifWriter::new(Vec::new());
        w.write_entry(&e).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let bytes = w.into_inner();
        let back: Vec<_> = LdifReader::new(bytes.as_slice()).collect::<Result<_, _>>().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, vec![LdifRecord::Content(e)]);
    }

    #[test]
    fn ldif_parse_never_panics(s in "(dn: cn=a\n|[a-z]{1,4}:{1,2}[ <]?[A-Za-z0-9+/=,é東]{0,8}\n| [a-zé😀]{0,3}\n|-\n|\n|#x\n){0,12}") {
        for r in LdifReader::new(s.as_bytes()) {
            let _ = r;
        }
    }
}
