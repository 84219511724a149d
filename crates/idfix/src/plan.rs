//! What applying a finding changes, as LDAP modifications: the proposed
//! change of one finding ([`fix_change`]), the exact change against the
//! values the directory holds now and its inverse ([`exact_change`]), and
//! which findings an operator chose ([`selected`]). Pure: the caller reads
//! the current values and sends the modifications.

use directory::ldif::{ChangeRecord, ModOp, Modification};
use directory::{Dn, Value};

use crate::{Action, ErrorKind, Finding};

/// The directory change a finding proposes, as one modify: the old value
/// deleted and the new one added in the same request, so it applies only if
/// the old value is still there and never loses a value half-way.
pub fn fix_change(f: &Finding) -> Option<ChangeRecord> {
    let dn = Dn::parse(&f.dn).ok()?;
    let values = |v: &str| vec![Value::Text(v.to_string())];
    let mods = match (f.action, f.proposed.as_deref()) {
        (Action::Keep, _) => return None,
        (Action::Remove, _) => {
            vec![Modification { op: ModOp::Delete, attr: f.attribute.clone(), values: values(&f.value) }]
        }
        (Action::Edit, None) => return None,
        (Action::Edit, Some(new)) if f.value.is_empty() => {
            vec![Modification { op: ModOp::Add, attr: f.attribute.clone(), values: values(new) }]
        }
        (Action::Edit, Some(new)) => vec![
            Modification { op: ModOp::Delete, attr: f.attribute.clone(), values: values(&f.value) },
            Modification { op: ModOp::Add, attr: f.attribute.clone(), values: values(new) },
        ],
    };
    Some(ChangeRecord::Modify { dn, mods })
}

/// The exact change for a finding, given the attribute's current values:
/// (forward, back), each one modify (see `transform`). `None` when the
/// directory no longer holds what the finding saw.
pub fn exact_change(f: &Finding, current: &[String]) -> Option<(Vec<Modification>, Vec<Modification>)> {
    let after: Vec<String> = if f.value.is_empty() {
        // Blank: the attribute must still be absent.
        if !current.is_empty() {
            return None;
        }
        vec![f.proposed.clone()?]
    } else {
        let at = current.iter().position(|v| *v == f.value)?;
        let mut list = current.to_vec();
        match (f.action, &f.proposed) {
            (Action::Edit, Some(new)) => *list.get_mut(at)? = new.clone(),
            (Action::Remove, _) => {
                list.remove(at);
            }
            _ => return None,
        }
        list
    };
    Some((transform(&f.attribute, current, &after), transform(&f.attribute, &after, current)))
}

/// Value-level operations that turn the attribute's list `from` into `to`,
/// order included, in one modify: new values added, old ones deleted (a
/// delete fails if the value is not there — the modify then changes
/// nothing), then the values after the first misplaced one moved to the end
/// in order (delete + add). The attribute never becomes empty on the way, so
/// the server keeps its place in the entry: an undo restores the entry
/// byte for byte.
pub fn transform(attr: &str, from: &[String], to: &[String]) -> Vec<Modification> {
    let m = |op, v: &String| Modification { op, attr: attr.to_string(), values: vec![Value::Text(v.clone())] };
    let mut ops = Vec::new();
    let mut list: Vec<String> = from.to_vec();
    for v in to.iter().filter(|v| !from.contains(v)) {
        ops.push(m(ModOp::Add, v));
        list.push(v.clone());
    }
    for v in from.iter().filter(|v| !to.contains(v)) {
        ops.push(m(ModOp::Delete, v));
        list.retain(|x| x != v);
    }
    if let Some(first) = list.iter().zip(to).position(|(a, b)| a != b) {
        for v in to.iter().skip(first) {
            ops.push(m(ModOp::Delete, v));
            ops.push(m(ModOp::Add, v));
        }
    }
    ops
}

pub fn selected(f: &Finding, only: &[String]) -> bool {
    only.is_empty()
        || only
            .iter()
            .any(|o| f.attribute.eq_ignore_ascii_case(o) || ErrorKind::parse(o).is_some_and(|k| f.errors.contains(&k)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies value operations the way an LDAP server does.
    fn run(ops: &[Modification], mut list: Vec<String>) -> Vec<String> {
        for op in ops {
            let v = op.values[0].as_text().unwrap().to_string();
            match op.op {
                ModOp::Add => {
                    assert!(!list.contains(&v), "add of an existing value");
                    list.push(v)
                }
                ModOp::Delete => {
                    let at = list.iter().position(|x| *x == v).expect("delete of a missing value");
                    list.remove(at);
                    assert!(!list.is_empty() || ops.len() == 1, "the attribute would vanish mid-way");
                }
                _ => panic!("unexpected modify operation"),
            }
        }
        list
    }

    #[test]
    fn transforms_keep_the_order_and_undo_exactly() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        for (from, to) in [
            (s(&["a"]), s(&["a2"])),
            (s(&["a", "b", "c"]), s(&["a", "b2", "c"])),
            (s(&["a", "b", "c"]), s(&["b2", "b", "c"])),
            (s(&["a", "b", "c"]), s(&["a", "c"])),
        ] {
            assert_eq!(run(&transform("x", &from, &to), from.clone()), to);
            assert_eq!(run(&transform("x", &to, &from), to.clone()), from);
        }
    }
}
