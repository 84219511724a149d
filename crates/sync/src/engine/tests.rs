//! The engine on its own: an in-memory source, store and target.

use std::convert::Infallible;

use directory::{Anchor, Dn, Entry, ObjectKind};
use serde_json::Value as Json;

use super::export::{Graph, deletion_allowance, dependency_levels};
use super::memory::{MemoryStore, MemoryTarget};
use super::*;
use crate::source::{ImportMode, ImportSink, ImportSummary, SourceChange, SourceId, SourceObject, Watermark};

/// A source whose every import is a full, reconciling one.
#[derive(Debug, Default)]
struct MemorySource {
    objects: Vec<SourceObject>,
}

fn base() -> Dn {
    Dn::parse("dc=example,dc=org").unwrap()
}

impl MemorySource {
    fn add(&mut self, id: u8, kind: ObjectKind, rdn: &str, attrs: &[(&str, &str)]) {
        let mut entry = Entry::new(Dn::parse(&format!("{rdn},dc=example,dc=org")).unwrap());
        for (k, v) in attrs {
            entry.add(k, *v);
        }
        self.objects.retain(|o| o.id.0 != [id]);
        self.objects.push(SourceObject { id: SourceId(vec![id]), anchor: Anchor::from_bytes(&[id; 16]), kind, entry });
    }

    fn user(&mut self, id: u8, uid: &str, extra: &[(&str, &str)]) {
        let mail = format!("{uid}@example.org");
        let mut attrs = vec![("uid", uid), ("cn", uid), ("mail", mail.as_str())];
        attrs.extend_from_slice(extra);
        self.add(id, ObjectKind::User, &format!("uid={uid}"), &attrs);
    }

    fn remove(&mut self, id: u8) {
        self.objects.retain(|o| o.id.0 != [id]);
    }
}

impl Source for MemorySource {
    type Error = Infallible;

    async fn full_import(
        &mut self,
        _previous: Option<&Watermark>,
        sink: &mut (dyn ImportSink + Send),
    ) -> Result<ImportSummary, Infallible> {
        for o in &self.objects {
            // The engine refuses nothing here but a failing store.
            let _ = sink.accept(SourceChange::Upsert(o.clone()));
        }
        Ok(ImportSummary {
            mode: ImportMode::Full,
            watermark: Watermark("w".into()),
            reconcile_within: vec![base()],
            upserts: self.objects.len() as u64,
            deletes: 0,
            presents: 0,
        })
    }

    async fn delta_import(
        &mut self,
        since: &Watermark,
        sink: &mut (dyn ImportSink + Send),
    ) -> Result<ImportSummary, Infallible> {
        self.full_import(Some(since), sink).await
    }
}

async fn cycle(
    name: &str,
    source: &mut MemorySource,
    store: &mut MemoryStore,
    target: &mut MemoryTarget,
    options: &CycleOptions,
) -> CycleReport {
    run_cycle(name, Flavor::Ldap, source, store, target, options, &mut Quiet).await.unwrap()
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

/// Password hash sync in chunks, one at the target while the next is
/// looked up: a chunk the target refuses as a whole stops the stage — the
/// chunk after it, already looked up, is never sent — and its users and
/// every later one stay pending until the next cycle sends them.
#[test]
fn passwords_go_in_chunks_and_a_refused_chunk_stops_the_rest() {
    run(async {
        let (mut source, mut store, mut target) = (MemorySource::default(), MemoryStore::new(), MemoryTarget::new());
        let options = CycleOptions { password_sync: true, ..CycleOptions::default() };
        // Ten users: chunks of 4, 4 and 2 (the chunk size under test).
        for id in 1..=10u8 {
            source.user(id, &format!("zoë{id}"), &[("userPassword", "{SSHA}Ouc4sZrcX2+ujbTggIsu9xBJo9saLNyZ")]);
        }
        target.refuse_password_push = Some(1);
        let report = cycle("s", &mut source, &mut store, &mut target, &options).await;
        assert_eq!(report.created, 10, "{report:?}");
        assert_eq!(report.passwords_synced, 4, "{report:?}");
        assert!(report.password_failure.is_some(), "{report:?}");
        assert_eq!(target.password_pushes, 2, "the third chunk is not sent after the second failed");
        assert_eq!(target.passwords.len(), 4);
        assert_eq!(store.passwords_pending("s").unwrap().len(), 6, "the refused chunk and the one after it");

        target.refuse_password_push = None;
        let report = cycle("s", &mut source, &mut store, &mut target, &options).await;
        assert_eq!(report.passwords_synced, 10, "{report:?}");
        assert!(report.password_failure.is_none(), "{report:?}");
        assert_eq!(target.password_pushes, 5);
        assert_eq!(target.passwords.len(), 10);
        assert!(store.passwords_pending("s").unwrap().is_empty());
        assert!(!store.in_transaction());
    });
}

#[test]
fn create_update_delete_round_trip() {
    run(async {
        let (mut source, mut store, mut target) = (MemorySource::default(), MemoryStore::new(), MemoryTarget::new());
        let options = CycleOptions::default();
        source.user(1, "ann", &[("title", "Zoë's boss")]);
        source.user(2, "bob", &[]);
        let report = cycle("s", &mut source, &mut store, &mut target, &options).await;
        assert_eq!((report.imported, report.synced, report.created), (2, 2, 2), "{report:?}");
        assert_eq!(report.status, CycleStatus::Success);
        let anchor = Anchor::from_bytes(&[1; 16]).immutable_id();
        let (_, ann) = target.by_anchor(&anchor).unwrap();
        assert_eq!(ann["title"], "Zoë's boss");

        // Nothing changed: nothing sent.
        let batches = target.batches.len();
        let report = cycle("s", &mut source, &mut store, &mut target, &options).await;
        assert_eq!((report.created, report.updated, report.deleted), (0, 0, 0));
        assert!(target.batches.len() == batches || target.batches.last().is_some_and(Vec::is_empty));

        source.user(1, "ann", &[("title", "Chef")]);
        let report = cycle("s", &mut source, &mut store, &mut target, &options).await;
        assert_eq!(report.updated, 1, "{report:?}");
        source.remove(2);
        let report = cycle("s", &mut source, &mut store, &mut target, &options).await;
        assert_eq!((report.deleted_on_premises, report.deleted), (1, 1), "{report:?}");
        assert_eq!(target.objects.len(), 1);
        assert!(!store.in_transaction());
    });
}

#[test]
fn the_deletion_threshold_holds_back_every_change_until_allowed() {
    assert_eq!(deletion_allowance(&CycleOptions { deletion_threshold: 2, ..CycleOptions::default() }), 2);
    let allowing = |n| CycleOptions { deletion_threshold: 2, allow_deletes: Some(n), ..CycleOptions::default() };
    assert_eq!(deletion_allowance(&allowing(5)), 5);
    assert_eq!(deletion_allowance(&allowing(1)), 2, "allowing fewer never lowers the threshold");
    run(async {
        let (mut source, mut store, mut target) = (MemorySource::default(), MemoryStore::new(), MemoryTarget::new());
        for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
            source.user(i as u8 + 1, name, &[]);
        }
        let strict = CycleOptions { deletion_threshold: 2, ..CycleOptions::default() };
        cycle("s", &mut source, &mut store, &mut target, &strict).await;
        assert_eq!(target.objects.len(), 4);
        for id in 1..=3 {
            source.remove(id);
        }
        source.user(9, "new", &[]);
        let report = cycle("s", &mut source, &mut store, &mut target, &strict).await;
        assert_eq!(report.status, CycleStatus::StoppedDeletionThresholdExceeded { pending: 3, threshold: 2 });
        assert_eq!((report.created, report.deleted), (0, 0), "nothing at all is sent: {report:?}");
        assert_eq!(target.objects.len(), 4);
        // Exactly at the threshold passes; here three must be allowed.
        let report = cycle("s", &mut source, &mut store, &mut target, &allowing(3)).await;
        assert_eq!((report.created, report.deleted), (1, 3), "{report:?}");
        assert_eq!(report.status, CycleStatus::Success);
    });
}

#[test]
fn dependency_levels_put_references_first_and_cut_cycles() {
    let node = |id: &str, refs: &[&str], exported: bool| super::DirtyObject {
        id: id.into(),
        deleted: false,
        refs: refs.iter().map(|r| r.to_string()).collect(),
        exported,
        members_only: false,
    };
    // Ids of several lengths and non-ASCII ones: the graph keeps them end to end.
    let graph: Graph = [
        node("gröup", &["ann", "bob", "done"], false),
        node("ann", &["böss"], false),
        node("done", &["ann"], true),
        node("böss", &[], false),
        node("bob", &["gone-elsewhere"], false),
        node("solo", &["done"], false),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        (0..graph.len()).map(|n| graph.id(n)).collect::<Vec<_>>(),
        ["gröup", "ann", "done", "böss", "bob", "solo"]
    );
    let levels = dependency_levels(&graph, &[]);
    let level_of = |id: &str| levels.iter().position(|l| l.iter().any(|&x| graph.id(x) == id)).unwrap();
    assert!(level_of("böss") < level_of("ann"));
    assert!(level_of("ann") < level_of("gröup") && level_of("bob") < level_of("gröup"));
    assert_eq!(level_of("bob"), 0, "references outside the batch do not wait");
    assert!(level_of("done") > 0);
    assert_eq!(level_of("solo"), 0, "the tenant has \"done\" already: nothing waits for it");
    assert_eq!(levels.iter().map(Vec::len).sum::<usize>(), 6, "every node once");
    // `after` orders too: here "bob" after "böss" (node 4 after node 3).
    let levels = dependency_levels(&graph, &[(4, 3)]);
    let level_of = |id: &str| levels.iter().position(|l| l.iter().any(|&x| graph.id(x) == id)).unwrap();
    assert!(level_of("böss") < level_of("bob"));
    // A cycle is cut where it closes: both still get a level.
    let graph: Graph = [node("x", &["y"], false), node("y", &["x"], false)].into_iter().collect();
    let levels = dependency_levels(&graph, &[]);
    assert_eq!(levels.iter().map(Vec::len).sum::<usize>(), 2);
}

#[test]
fn a_manager_created_in_the_same_cycle_is_referenced_on_the_first_pass() {
    run(async {
        let (mut source, mut store, mut target) = (MemorySource::default(), MemoryStore::new(), MemoryTarget::new());
        source.user(1, "ann", &[("manager", "uid=boss,dc=example,dc=org")]);
        source.user(2, "boss", &[]);
        let report = cycle("s", &mut source, &mut store, &mut target, &CycleOptions::default()).await;
        assert_eq!(report.created, 2, "{report:?}");
        let (boss_id, _) = target.by_anchor(&Anchor::from_bytes(&[2; 16]).immutable_id()).unwrap();
        let boss_id = boss_id.clone();
        let (_, ann) = target.by_anchor(&Anchor::from_bytes(&[1; 16]).immutable_id()).unwrap();
        let manager = &ann["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["manager"]["value"];
        assert_eq!(manager, &Json::String(boss_id));
        assert_eq!(target.batches.len(), 2, "the manager's level first, then the user's");
    });
}

#[test]
fn joins_take_the_one_match_and_record_an_ambiguous_one() {
    run(async {
        let (mut hr, mut it, mut store, mut target) =
            (MemorySource::default(), MemorySource::default(), MemoryStore::new(), MemoryTarget::new());
        hr.user(1, "ann", &[]);
        hr.user(2, "bob", &[]);
        // A second "bob@example.org" (the join value) on another person.
        hr.add(3, ObjectKind::User, "uid=bob2", &[("uid", "bob2"), ("cn", "bob2"), ("mail", "bob@example.org")]);
        cycle("hr", &mut hr, &mut store, &mut target, &CycleOptions::default()).await;
        let join = JoinRules {
            groups: vec![vec![("mail".into(), "mail".into())]],
            project: false,
            authoritative: vec!["telephoneNumber".into()],
            references: Default::default(),
        };
        let options = CycleOptions { join: Some(join), ..CycleOptions::default() };
        it.add(10, ObjectKind::User, "cn=ann", &[("mail", "ANN@example.org"), ("telephoneNumber", "+41 1")]);
        it.add(11, ObjectKind::User, "cn=bob", &[("mail", "bob@example.org"), ("telephoneNumber", "+41 2")]);
        it.add(12, ObjectKind::User, "cn=nobody", &[("mail", "nobody@example.org")]);
        let report = cycle("it", &mut it, &mut store, &mut target, &options).await;
        assert_eq!((report.synced, report.out_of_scope, report.created), (1, 2, 0), "{report:?}");
        assert_eq!(report.updated, 1, "ann's tenant object gets the joined phone number");
        let (_, confirmed) = store.exported(&ann_mv(&store)).unwrap().unwrap();
        assert!(confirmed["phoneNumbers"].to_string().contains("+41 1"), "{confirmed}");
        let errors = store.errors();
        assert!(
            errors.iter().any(|(key, stage, message, _)| key.contains("cn=bob")
                && stage == "join"
                && message.contains("2 metaverse objects")),
            "{errors:?}"
        );
    });
}

/// `references = ["members"]`: a joined group's members replace the
/// projecting group's, each resolved in the joined source — through the
/// object it projected or the one it joined.
#[test]
fn a_joined_group_gives_its_members_resolved_in_its_own_source() {
    run(async {
        let (mut corp, mut hr, mut store, mut target) =
            (MemorySource::default(), MemorySource::default(), MemoryStore::new(), MemoryTarget::new());
        corp.user(1, "ann", &[]);
        corp.user(2, "bob", &[]);
        corp.add(3, ObjectKind::Group, "cn=staff", &[("cn", "staff"), ("member", "uid=ann,dc=example,dc=org")]);
        cycle("corp", &mut corp, &mut store, &mut target, &CycleOptions::default()).await;
        // HR's group lists bob (its record "hbob" joins corp's bob) and a person only HR has.
        hr.add(20, ObjectKind::Group, "cn=staff", &[("cn", "staff"), ("member", "uid=hbob,dc=example,dc=org")]);
        hr.add(21, ObjectKind::User, "uid=hbob", &[("uid", "hbob"), ("cn", "hbob"), ("mail", "bob@example.org")]);
        let join = JoinRules {
            groups: vec![vec![("mail".into(), "mail".into())], vec![("cn".into(), "displayName".into())]],
            project: false,
            authoritative: Vec::new(),
            references: super::JoinedReferences { manager: false, members: true },
        };
        let options = CycleOptions { join: Some(join), ..CycleOptions::default() };
        cycle("hr", &mut hr, &mut store, &mut target, &options).await;
        let group = store.mv_for_dn("corp", &Dn::parse("cn=staff,dc=example,dc=org").unwrap()).unwrap().unwrap();
        let bob = store.mv_for_dn("corp", &Dn::parse("uid=bob,dc=example,dc=org").unwrap()).unwrap().unwrap();
        assert_eq!(store.mv_get(&group).unwrap().unwrap().members, vec![bob.clone()], "HR's member, resolved");
        let (_, confirmed) = store.exported(&group).unwrap().unwrap();
        let bob_tenant = store.exported_id(&bob).unwrap().unwrap();
        assert_eq!(confirmed["members"], serde_json::json!([{"value": bob_tenant}]), "{confirmed}");
    });
}

fn ann_mv(store: &MemoryStore) -> String {
    store.mv_for_dn("hr", &Dn::parse("uid=ann,dc=example,dc=org").unwrap()).unwrap().unwrap()
}

#[test]
fn a_transaction_dropped_without_commit_leaves_nothing() {
    let mut store = MemoryStore::new();
    {
        let mut tx = Transaction::begin(&mut store).unwrap();
        tx.set_watermark("s", &Watermark("half".into())).unwrap();
        // Dropped: an error returned with `?`, a panic or a cancelled future.
    }
    assert!(!store.in_transaction());
    assert_eq!(store.watermark("s").unwrap(), None);
    let mut tx = Transaction::begin(&mut store).unwrap();
    tx.set_watermark("s", &Watermark("whole".into())).unwrap();
    tx.commit().unwrap();
    assert_eq!(store.watermark("s").unwrap(), Some(Watermark("whole".into())));
}

/// The tenant keeps a value with its holder and gives a released one to the
/// lowest immutableId waiting (`proto::unique`): the engine sends the
/// objects that newly claim a value in ascending immutableId order and before
/// the object that gives it up, whatever order the source had them in.
#[test]
fn claimants_of_one_value_are_sent_lowest_immutable_id_first_and_before_its_holder_lets_go() {
    run(async {
        let (mut source, mut store, mut target) = (MemorySource::default(), MemoryStore::new(), MemoryTarget::new());
        let options = CycleOptions::default();
        let position = |target: &MemoryTarget, id: u8| {
            let anchor = Anchor::from_bytes(&[id; 16]).immutable_id();
            target.batches.iter().flatten().collect::<Vec<_>>().iter().rposition(|op| match op {
                ExportOp::Create { resource, .. } => resource["externalId"] == anchor.as_str(),
                ExportOp::Patch { id: tenant_id, .. } => target.by_anchor(&anchor).is_some_and(|(t, _)| t == tenant_id),
                ExportOp::Delete { .. } => false,
            })
        };
        let person = |id: u8, mail: &str| {
            (id, format!("uid=p{id}"), [("uid", "p".to_string()), ("cn", "p".into()), ("mail", mail.into())])
        };
        let add = |source: &mut MemorySource, (id, rdn, attrs): (u8, String, [(&str, String); 3])| {
            let attrs: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            source.add(id, ObjectKind::User, &rdn, &attrs);
        };
        add(&mut source, person(1, "shared@example.org"));
        cycle("s", &mut source, &mut store, &mut target, &options).await;
        // Three new people want the same address (listed highest anchor
        // first), the holder gives it up in the same cycle.
        for id in [9, 5, 3] {
            add(&mut source, person(id, "shared@example.org"));
        }
        add(&mut source, person(1, "holder@example.org"));
        cycle("s", &mut source, &mut store, &mut target, &options).await;
        let [three, five, nine, holder] = [3, 5, 9, 1].map(|id| position(&target, id).unwrap());
        assert!(three < five && five < nine, "ascending immutableId: {three} {five} {nine}");
        assert!(nine < holder, "the holder lets go after every claimant asked: {nine} {holder}");
    });
}

#[test]
fn a_group_the_cloud_took_over_waits_and_after_the_hand_back_is_sent_whole() {
    run(async {
        let (mut source, mut store, mut target) = (MemorySource::default(), MemoryStore::new(), MemoryTarget::new());
        source.user(1, "ann", &[]);
        source.user(2, "bob", &[]);
        let group = |source: &mut MemorySource, members: &[&str]| {
            let mut attrs = vec![("cn", "staff"), ("objectClass", "groupOfNames")];
            attrs.extend(members.iter().map(|m| ("member", *m)));
            source.add(3, ObjectKind::Group, "cn=staff", &attrs);
        };
        group(&mut source, &["uid=ann,dc=example,dc=org"]);
        let report = cycle("s", &mut source, &mut store, &mut target, &CycleOptions::default()).await;
        assert_eq!(report.created, 3, "{report:?}");
        let anchor = Anchor::from_bytes(&[3; 16]).immutable_id();
        let taken = CycleOptions {
            cloud_managed: std::sync::Arc::new([anchor.clone()].into_iter().collect()),
            ..CycleOptions::default()
        };

        // Taken over: the directory's change waits, nothing is sent about the group.
        group(&mut source, &["uid=ann,dc=example,dc=org", "uid=bob,dc=example,dc=org"]);
        let sent = target.batches.len();
        let report = cycle("s", &mut source, &mut store, &mut target, &taken).await;
        assert_eq!((report.created, report.updated), (0, 0), "{report:?}");
        assert!(target.batches[sent..].iter().all(Vec::is_empty), "{:?}", &target.batches[sent..]);
        assert!(!store.dirty_objects().unwrap().is_empty(), "the group stays pending");
        let again = cycle("s", &mut source, &mut store, &mut target, &taken).await;
        assert_eq!((again.created, again.updated), (0, 0), "{again:?}");

        // Handed back: sent whole, as a create the tenant matches by immutableId.
        let report = cycle("s", &mut source, &mut store, &mut target, &CycleOptions::default()).await;
        assert_eq!(report.created, 1, "{report:?}");
        let creates: Vec<&ExportOp> = target
            .batches
            .iter()
            .flatten()
            .filter(|op| matches!(op, ExportOp::Create { kind: ObjectKind::Group, .. }))
            .collect();
        let Some(ExportOp::Create { resource, .. }) = creates.last() else { panic!("no create: {creates:?}") };
        assert_eq!(resource["members"].as_array().map(Vec::len), Some(2), "{}", ***resource);
        assert!(store.dirty_objects().unwrap().is_empty());
    });
}

#[test]
fn a_large_sync_stage_resolves_forward_references_with_its_helper_thread() {
    // More pending objects than the stage syncs on the store's thread alone,
    // so batches are decoded and projected on the helper thread. Every
    // reference points at an object imported later: it resolves in the
    // second pass, after the object it names was projected. The references
    // waiting are kept in memory until there are more than the stage keeps
    // (400 in tests), then the store is asked: both ways within one stage.
    const USERS: u16 = 300;
    let dn = |i: u16| format!("uid=u{i},dc=example,dc=org");
    let anchor = |i: u16| {
        let [hi, lo] = i.to_be_bytes();
        Anchor::from_bytes(&[hi, lo, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    };
    run(async {
        let (mut source, mut store, mut target) = (MemorySource::default(), MemoryStore::new(), MemoryTarget::new());
        let mut group = Entry::new(Dn::parse("cn=everyone,dc=example,dc=org").unwrap());
        group.add("cn", "everyone");
        for i in 0..USERS {
            group.add("member", dn(i).as_str());
        }
        source.objects.push(SourceObject {
            id: SourceId(vec![0xff, 0xff, 0]),
            anchor: Anchor::from_bytes(&[0xff; 16]),
            kind: ObjectKind::Group,
            entry: group,
        });
        for i in 0..USERS {
            let mut entry = Entry::new(Dn::parse(&dn(i)).unwrap());
            entry.add("uid", format!("u{i}").as_str());
            entry.add("cn", format!("Ünïcode {i}").as_str());
            if i + 1 < USERS {
                entry.add("manager", dn(i + 1).as_str());
            }
            let [hi, lo] = i.to_be_bytes();
            source.objects.push(SourceObject {
                id: SourceId(vec![hi, lo]),
                anchor: anchor(i),
                kind: ObjectKind::User,
                entry,
            });
        }
        let report = cycle("s", &mut source, &mut store, &mut target, &CycleOptions::default()).await;
        assert_eq!(report.created, u64::from(USERS) + 1, "{report:?}");
        for i in 0..USERS - 1 {
            let (next_id, _) = target.by_anchor(&anchor(i + 1).immutable_id()).unwrap();
            let next_id = next_id.clone();
            let (_, user) = target.by_anchor(&anchor(i).immutable_id()).unwrap();
            assert_eq!(user["displayName"], Json::String(format!("Ünïcode {i}")));
            let manager = &user["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["manager"]["value"];
            assert_eq!(manager, &Json::String(next_id), "user {i}");
        }
        let (_, group) = target.by_anchor(&Anchor::from_bytes(&[0xff; 16]).immutable_id()).unwrap();
        assert_eq!(group["members"].as_array().map(Vec::len), Some(usize::from(USERS)));
        // Nothing changed: nothing synced again wrongly, nothing sent.
        let report = cycle("s", &mut source, &mut store, &mut target, &CycleOptions::default()).await;
        assert_eq!((report.created, report.updated, report.deleted), (0, 0, 0), "{report:?}");
        assert!(!store.in_transaction());
    });
}

#[test]
fn members_projected_earlier_in_a_full_sync_resolve_exactly() {
    // The group comes after its members: in the full sync they resolve from
    // what the stage projected (a member written in other case too). A DN
    // two users share and a DN nobody has are left to the store: the first
    // gives what the store gives, the second nothing until it exists.
    let dn = |rdn: &str| Dn::parse(&format!("{rdn},dc=example,dc=org")).unwrap();
    run(async {
        let (mut source, mut store, mut target) = (MemorySource::default(), MemoryStore::new(), MemoryTarget::new());
        for (id, uid) in [(1, "u1"), (2, "ü2"), (3, "u3")] {
            source.user(id, uid, &[]);
        }
        for (id, uid) in [(4, "twin-a"), (5, "twin-b")] {
            let mail = format!("{uid}@example.org");
            source.add(id, ObjectKind::User, "uid=twin", &[("uid", uid), ("cn", uid), ("mail", mail.as_str())]);
        }
        let members = [
            "uid=u1,dc=example,dc=org",
            "UID=ü2,DC=Example,DC=ORG",
            "uid=u3,dc=example,dc=org",
            "uid=twin,dc=example,dc=org",
            "uid=ghost,dc=example,dc=org",
        ];
        let mut attrs = vec![("cn", "staff")];
        attrs.extend(members.iter().map(|m| ("member", *m)));
        source.add(9, ObjectKind::Group, "cn=staff", &attrs);

        let target_id = |target: &MemoryTarget, id: u8| {
            target.by_anchor(&Anchor::from_bytes(&[id; 16]).immutable_id()).map(|(t, _)| t.clone())
        };
        let group_members = |target: &MemoryTarget| -> Vec<String> {
            let (_, group) = target.by_anchor(&Anchor::from_bytes(&[9; 16]).immutable_id()).unwrap();
            let mut ids: Vec<String> = group["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["value"].as_str().map(str::to_owned))
                .collect();
            ids.sort();
            ids
        };
        let report = cycle("s", &mut source, &mut store, &mut target, &CycleOptions::default()).await;
        assert_eq!(report.created, 6, "{report:?}");
        let twins_in_store = store.mv_for_dns("s", &[dn("uid=twin")]).unwrap().len();
        assert!(twins_in_store >= 1);
        let mut expected: Vec<String> = [1, 2, 3].iter().filter_map(|&id| target_id(&target, id)).collect();
        let got = group_members(&target);
        let twins: Vec<String> = [4, 5].iter().filter_map(|&id| target_id(&target, id)).collect();
        assert_eq!(got.iter().filter(|m| twins.contains(m)).count(), twins_in_store, "{got:?}");
        expected.extend(got.iter().filter(|m| twins.contains(m)).cloned());
        expected.sort();
        assert_eq!(got, expected);

        // The missing member appears: a delta sync (the store resolves) adds it.
        source.user(10, "ghost", &[]);
        let report = cycle("s", &mut source, &mut store, &mut target, &CycleOptions::default()).await;
        assert_eq!((report.created, report.updated), (1, 1), "{report:?}");
        let ghost = target_id(&target, 10).unwrap();
        let group = target_id(&target, 9).unwrap();
        let added = serde_json::json!([{ "op": "add", "path": "members", "value": [{ "value": ghost }] }]);
        assert!(
            target.batches.iter().flatten().any(|op| matches!(op,
                ExportOp::Patch { id, operations, .. } if *id == group && Json::Array(operations.clone()) == added)),
            "{:?}",
            target.batches.last()
        );

        // A full sync of the same directory (resolved from what it projects)
        // finds the members the engine sent: nothing to change.
        let full = CycleOptions { full: true, ..CycleOptions::default() };
        let report = cycle("s", &mut source, &mut store, &mut target, &full).await;
        assert_eq!((report.created, report.updated, report.deleted), (0, 0, 0), "{report:?}");
    });
}

#[test]
fn contested_unique_values_are_ordered_by_anchor_with_or_without_helpers() {
    // Two users want the same address (the userName it gives); the one with
    // the lower anchor must go first, whether the ordering ran on the
    // store's thread alone (few objects) or with helper threads (many).
    run(async {
        let (mut source, mut store, mut target) = (MemorySource::default(), MemoryStore::new(), MemoryTarget::new());
        for i in 1..=60u8 {
            let shared = [7, 50].contains(&i);
            let mail = if shared { "zoë.shared@example.org".to_string() } else { format!("u{i}@example.org") };
            source.add(
                i,
                ObjectKind::User,
                &format!("uid=u{i}"),
                &[("uid", &format!("u{i}")), ("cn", "Zoë"), ("mail", &mail)],
            );
        }
        let staging = CycleOptions { staging: true, ..CycleOptions::default() };
        cycle("s", &mut source, &mut store, &mut target, &staging).await;
        let nodes = store.dirty_objects().unwrap();
        let anchor_of = |id: &str| store.mv_get(id).unwrap().unwrap().anchor;
        let wanted: Vec<String> = [3, 7, 50].iter().map(|b| Anchor::from_bytes(&[*b; 16]).immutable_id()).collect();
        let few: Graph = nodes.iter().filter(|n| wanted.contains(&anchor_of(&n.id))).cloned().collect();
        assert_eq!(few.len(), 3);
        for set in [few, nodes.into_iter().collect::<Graph>()] {
            let edges = super::export::contest_order(&store, &set, &CycleOptions::default().rules).unwrap();
            assert_eq!(edges.len(), 1, "{} objects: {edges:?}", set.len());
            let (later, earlier) = edges[0];
            assert!(anchor_of(set.id(earlier)) < anchor_of(set.id(later)), "{} objects", set.len());
        }
    });
}
