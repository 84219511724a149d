//! Connect's out-of-box rules, recognised by their immutable tag
//! (`Microsoft.<stem>.<version>`): what idbridge does in their place, and the
//! fingerprint of each version's content as Connect installs it, so that an
//! out-of-box rule someone edited is found and treated as a custom rule.

use crate::export::{Flow, Mapping, MergeType, SyncRule};

/// What idbridge has in place of an out-of-box rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counterpart {
    /// idbridge's built-in rules (or the engine) do this.
    BuiltIn(&'static str),
    /// A workload or feature idbridge's tenant does not have.
    Missing(&'static str),
}

const INBOUND_AD: Counterpart = Counterpart::BuiltIn(
    "idbridge's built-in inbound rules (ad-user-identity, person, group; userPrincipalName, accountEnabled, the sourceAnchor and the DN-derived attributes are built in)",
);
const OUTBOUND_AAD: Counterpart =
    Counterpart::BuiltIn("idbridge's built-in outbound rules (out-user, out-group, out-contact, out-hybrid)");
const CLOUD_JOIN: Counterpart = Counterpart::BuiltIn(
    "built in: the tenant's objects are matched by immutableId (hard match) and by userName/proxyAddresses (soft match)",
);
const EXCHANGE: Counterpart = Counterpart::Missing(
    "Exchange attributes (msExch*) and Exchange hybrid writeback: the idbridge tenant hosts no Exchange",
);
const LYNC: Counterpart =
    Counterpart::Missing("Lync / Skype for Business attributes (msRTCSIP-*): the idbridge tenant hosts no Skype");
const DEVICES: Counterpart = Counterpart::Missing(
    "devices (computers, msDS-Device, Hybrid join): idbridge synchronises users, groups and contacts",
);

const SHAREPOINT: Counterpart =
    Counterpart::Missing("SharePoint Online attributes: the idbridge tenant hosts no SharePoint");
const INTUNE: Counterpart = Counterpart::Missing("Intune attributes: the idbridge tenant has no device management");
const DYNAMICS: Counterpart = Counterpart::Missing("Dynamics CRM attributes: the idbridge tenant hosts no Dynamics");
const RMS: Counterpart = Counterpart::Missing("Azure RMS attributes: the idbridge tenant has no rights management");

/// The tag's stem (`Microsoft.InfromADUserCommon`) → its counterpart.
const STEMS: &[(&str, Counterpart)] = &[
    ("InfromADUserJoin", INBOUND_AD),
    ("InfromADUserCommon", INBOUND_AD),
    ("InfromADUserAccountEnabled", INBOUND_AD),
    ("InfromADInetOrgPersonJoin", INBOUND_AD),
    ("InfromADInetOrgPersonCommon", INBOUND_AD),
    ("InfromADInetOrgPersonAccountEnabled", INBOUND_AD),
    ("InfromADGroupJoin", INBOUND_AD),
    ("InfromADGroupCommon", INBOUND_AD),
    ("InfromADContactJoin", INBOUND_AD),
    ("InfromADContactCommon", INBOUND_AD),
    ("InfromADUserExchange", EXCHANGE),
    ("InfromADUserCommonfromExchange", EXCHANGE),
    ("InfromADInetOrgPersonExchange", EXCHANGE),
    ("InfromADInetOrgPersonCommonfromExchange", EXCHANGE),
    ("InfromADGroupExchange", EXCHANGE),
    ("InfromADUserLync", LYNC),
    ("InfromADInetOrgPersonLync", LYNC),
    ("InfromADContactLync", LYNC),
    ("InfromADComputerJoin", DEVICES),
    ("InfromADDeviceCommon", DEVICES),
    (
        "InfromADForeignSecurityPrincipalJoinUser",
        Counterpart::Missing(
            "members from another forest through foreign security principals: idbridge resolves members within each source",
        ),
    ),
    ("InfromAADUserJoin", CLOUD_JOIN),
    ("InfromAADGroupJoin", CLOUD_JOIN),
    ("InfromAADContactJoin", CLOUD_JOIN),
    ("InfromAADUserExchangeHybrid", EXCHANGE),
    ("InfromAADGroupExchangeHybrid", EXCHANGE),
    ("InfromAADContactExchangeHybrid", EXCHANGE),
    ("InfromAADUserNGCKey", Counterpart::Missing("Windows Hello for Business keys (msDS-KeyCredentialLink writeback)")),
    ("OuttoAADUserJoin", OUTBOUND_AAD),
    ("OuttoAADUserIdentity", OUTBOUND_AAD),
    ("OuttoAADGroupJoin", OUTBOUND_AAD),
    ("OuttoAADGroupIdentity", OUTBOUND_AAD),
    ("OuttoAADContactJoin", OUTBOUND_AAD),
    ("OuttoAADContactIdentity", OUTBOUND_AAD),
    ("OuttoAADUserExchangeOnline", EXCHANGE),
    ("OuttoAADGroupExchangeOnline", EXCHANGE),
    ("OuttoAADContactExchangeOnline", EXCHANGE),
    ("OuttoAADUserLyncOnline", LYNC),
    ("OuttoAADGroupLyncOnline", LYNC),
    ("OuttoAADContactLyncOnline", LYNC),
    ("OuttoAADUserSharePointOnline", SHAREPOINT),
    ("OuttoAADGroupSharePointOnline", SHAREPOINT),
    ("OuttoAADContactSharePointOnline", SHAREPOINT),
    ("OuttoAADUserIntune", INTUNE),
    ("OuttoAADGroupIntune", INTUNE),
    ("OuttoAADContactIntune", INTUNE),
    ("OuttoAADUserDynamicsCRM", DYNAMICS),
    ("OuttoAADGroupDynamicsCRM", DYNAMICS),
    ("OuttoAADContactDynamicsCRM", DYNAMICS),
    ("OuttoAADUserAzureRMS", RMS),
    ("OuttoAADGroupAzureRMS", RMS),
    ("OuttoAADContactAzureRMS", RMS),
    (
        "OuttoAADUserOfficeProPlus",
        Counterpart::Missing("Office ProPlus attributes: the idbridge tenant hosts no Office licensing"),
    ),
    ("OuttoAADJoinSOAInAD", DEVICES),
    ("OuttoADUserExchangeHybrid", EXCHANGE),
    ("OuttoADInetOrgPersonExchangeHybrid", EXCHANGE),
    ("OuttoADGroupExchangeHybrid", EXCHANGE),
    ("OuttoADContactExchangeHybrid", EXCHANGE),
    (
        "OuttoADUserJoinSOAInAD",
        Counterpart::BuiltIn(
            "built in: password writeback (tenant domain set --password-writeback on) joins by the user itself",
        ),
    ),
    ("OuttoADInetOrgPersonJoin", Counterpart::BuiltIn("built in: password writeback joins by the user itself")),
    (
        "OuttoADGroupJoin",
        Counterpart::BuiltIn("group writeback: [source.writeback] groups_ou (cloud groups written into that OU)"),
    ),
    (
        "OuttoADContactJoin",
        Counterpart::Missing("contacts written back from the cloud: idbridge writes back passwords and groups"),
    ),
];

/// Content fingerprints of out-of-box rules as Connect installs them
/// (`tag`, SHA-256 of [`fingerprint`]'s canonical text), taken from real
/// exports (`print_fingerprints` below prints these lines for an export). A rule whose tag is listed and whose content differs was edited.
const FINGERPRINTS: &[(&str, &str)] = &[
    (
        "Microsoft.InfromAADContactExchangeHybrid.003",
        "fa20a338837d1769fbbb80b127e64a76c45c631c18794c642a157badfd7052ad",
    ),
    ("Microsoft.InfromAADContactJoin.003", "c5c8fbb98c67196156c7561a8c7025d737bc9f677997e28da0a9e3bb72f747ca"),
    ("Microsoft.InfromAADGroupExchangeHybrid.003", "a9cff9d8392165e6b459a146388166c8e5def90bbab1803829719e21337d5e60"),
    ("Microsoft.InfromAADGroupJoin.004", "08566df04a1546505b7a7bd778b903a53e267cc6b72db907d7e236b14e201393"),
    ("Microsoft.InfromAADUserExchangeHybrid.003", "d4bac7ef63371619d317ff68246eebbf5c858576e9fc2555325e671e410cfe52"),
    ("Microsoft.InfromAADUserJoin.004", "1bdb7740c5b1fffe9dc79e353a1ab3d9d0bffd1ba2348e10b7e41fb76eb0cccf"),
    ("Microsoft.InfromAADUserNGCKey.001", "e3c2806d96ba19d3195d330d9e9b5cc421f5193e1e8e7749819f804aa0223a6a"),
    ("Microsoft.InfromADComputerJoin.002", "1650e3e36bd6ba31e31152bc32e8c396419695787aab0b9127328b7806047f2f"),
    ("Microsoft.InfromADContactCommon.004", "95950ad43344f6bcd6cc43edad17f1bb4b8af79716f1c466c85654e5144893b1"),
    ("Microsoft.InfromADContactJoin.003", "c650f1da017a0ee2b74829726bbddb88ad04f93e5b077e458f66a48b548f0f7e"),
    ("Microsoft.InfromADContactLync.003", "d89ce59a67d40422fc0a0a2fe59afcf7598a53a25568f544656d5d14c3e8db4b"),
    ("Microsoft.InfromADDeviceCommon.001", "20ffbc0bc53ad222bbd8cb4711f84a661c0dd5eed7f12bd59effa6d76f817217"),
    (
        "Microsoft.InfromADForeignSecurityPrincipalJoinUser.001",
        "85b65b808f8cfadea2c3333cf230bad3adaa0547b175b6fff69e6b006a8d5401",
    ),
    ("Microsoft.InfromADGroupCommon.004", "2b83ed893da3ba9f3c5471975a0153b49c9c3a9610aeb33a2f799c7197d2f3e0"),
    ("Microsoft.InfromADGroupExchange.004", "43eecda4db2346bbb3e341a21a6fdcffdaeca13cfa4bba9d57b1d30f97c4a0dc"),
    ("Microsoft.InfromADGroupJoin.003", "23a67938855d7b5190ffcc4393d077609ebadd51ce5a10f12c0eeda0dc573971"),
    (
        "Microsoft.InfromADInetOrgPersonAccountEnabled.003",
        "a6b839f28e108bc55506339ae894e75e656f9dbcad91940bb207ab8e9982b370",
    ),
    ("Microsoft.InfromADInetOrgPersonCommon.004", "c7457049b1bd23466d8ee78a4a34c40e37091cad47bb295011ce2efab5a8ce85"),
    (
        "Microsoft.InfromADInetOrgPersonCommonfromExchange.004",
        "d7128774b6499a813f689aaf1f37f880ee6bb24cb4efd711040bba27a363049d",
    ),
    ("Microsoft.InfromADInetOrgPersonExchange.003", "dd99a83a267366d8ab630811f8e12a991647bfdd8df619588b31210d56a65e05"),
    ("Microsoft.InfromADInetOrgPersonJoin.003", "a688de80bca8902f320079955da4bfa8e8d1172d63ac458d5fcbc7f1a9d6f4d1"),
    ("Microsoft.InfromADInetOrgPersonLync.003", "8203ecf2bf8645d3402551ff58e12a9fc979e3b37355b22ebe1b9693c3c1ff9c"),
    ("Microsoft.InfromADUserAccountEnabled.004", "da9b3248948a508d76bcffe8c63ea9bb16d2b86b6965ac0a3af866c5601ed7cd"),
    ("Microsoft.InfromADUserCommon.004", "4103ecdd37c420581cbab9cfd9bd7b68ad9b2f72419335025d4cfeddc2a500d8"),
    (
        "Microsoft.InfromADUserCommonfromExchange.004",
        "55b99ea563f4b4ef1671c9d0b8933552d46fde1c9f6d7748ca3922cc63a77727",
    ),
    ("Microsoft.InfromADUserExchange.003", "567029178586715dca68c2f5ce4e05aa7b6410813ab1efe2a5136c03eb6dc473"),
    ("Microsoft.InfromADUserJoin.003", "f125402e0eadc388c1c298fce25c1b427b4640a93590a151f2631624157f2b18"),
    ("Microsoft.InfromADUserLync.004", "eeb54dcf2e0348228e76e8666b2b5d272ca0de2b87d4aec13c33203d1729acbc"),
    ("Microsoft.OuttoAADContactAzureRMS.003", "70a868c2bbe40b858aee044685b548a126100b697637f970d78514f29a35b518"),
    ("Microsoft.OuttoAADContactDynamicsCRM.003", "035855e6011c73bcfea06d80cc055109ae4aee7b47becd49e08a29e962257840"),
    ("Microsoft.OuttoAADContactExchangeOnline.003", "f02b793da0825a3521fa4954c7dae4127ce8a4c2ad67f095905b05577247294e"),
    ("Microsoft.OuttoAADContactIdentity.003", "303f8bb662714bb7276a93bb0c87a4f3bf4e0b36ba6cbe1bd75f170cf75a858b"),
    ("Microsoft.OuttoAADContactIntune.003", "3e948ba195cf09e8723d5ac894800d497e3b7e708d974bb6ab0e690c5a6f5992"),
    ("Microsoft.OuttoAADContactJoin.003", "9b0b9ebe4bfbc09d08ffb8cfb4269743dbbea0ca3d0fd31b261b0f00320c1da6"),
    ("Microsoft.OuttoAADContactLyncOnline.003", "534cd66f63f550d2da385bbd9a29b6389e1f2755b26741bd548233ba6d370e59"),
    (
        "Microsoft.OuttoAADContactSharePointOnline.003",
        "6b1d88940b20ccddc733fd446d3bff8f9a56cc406245b184673dcb127a08af96",
    ),
    ("Microsoft.OuttoAADGroupAzureRMS.004", "41e4e85b5e087b0207988f062081448b4be18dc3859442b069558aa6b5f41b5c"),
    ("Microsoft.OuttoAADGroupDynamicsCRM.004", "f7c2015ecd493e46d28125d4024e1c63b46219d35a3cd1ee077c3c1ba4c2fdc1"),
    ("Microsoft.OuttoAADGroupExchangeOnline.005", "ecd51216adf71a9c17394deca8a9d2a074d8c33d833fc5425f5f2e07f1c1cf83"),
    ("Microsoft.OuttoAADGroupIdentity.004", "e0d631960ce45af2938be8d566a8c56d566df5e95c06be1b8833c0c956f15b74"),
    ("Microsoft.OuttoAADGroupIntune.004", "07af0b436d2fb4cd0a7818c784da663223cbf5da55cedb1e317186b9f02086c3"),
    ("Microsoft.OuttoAADGroupJoin.006", "a25a995c1d86dd457433440d1129f12a7f319e143ad4b40c9fd139baca9ce5aa"),
    ("Microsoft.OuttoAADGroupLyncOnline.004", "94ee2ef0797f4511dd9f866a50182d0370968289bee744e2018c912d443f5439"),
    ("Microsoft.OuttoAADGroupSharePointOnline.004", "326ee49c8d44d50f97620e497f5733e3c7de50564c4c04acf38173b7a6094b74"),
    ("Microsoft.OuttoAADJoinSOAInAD.002", "ba97d08e9a13969663e875b6ab5c4946d1eed1889a3be89b4d12966e964d202a"),
    ("Microsoft.OuttoAADUserAzureRMS.004", "ac1760e437ee2faf74f31e64ec2a46b1831f9329add6088c1d401615d9377985"),
    ("Microsoft.OuttoAADUserDynamicsCRM.004", "aff9eab38beb48000c1c0a11b0b0a6077953d5d288f37bc30591684478b49e87"),
    ("Microsoft.OuttoAADUserExchangeOnline.004", "3b949b5b0ff06b9f57b2de9aeb7e41f7bedb85ea0579fcd731b741fae875d8af"),
    ("Microsoft.OuttoAADUserIdentity.005", "c495adab5eea7c926ad5d77c45f4f919c43addc3b1afffd57e563ce3e92d619b"),
    ("Microsoft.OuttoAADUserIntune.004", "f4a59110fb02b90d7685920ca0ac8715056d61d98242bcbab6fa310a9fb9f61c"),
    ("Microsoft.OuttoAADUserJoin.006", "cd796a679e52acf206b068cc5d70db763ca383381c5ca84269574477370c4135"),
    ("Microsoft.OuttoAADUserLyncOnline.004", "4731a9ffd52626d3c63d558c271faf842ea6d5bf4770fa706ab6f65e60b775a0"),
    ("Microsoft.OuttoAADUserOfficeProPlus.004", "103fb0f2f9f276a2749792457c6e9fac27011a379bd523104045a418b0c8e998"),
    ("Microsoft.OuttoAADUserSharePointOnline.004", "75870a9868e6e954dce27d3db5d1ea08d3f55bd489f8a60a6ce1e563a6d8aefe"),
    ("Microsoft.OuttoADContactExchangeHybrid.003", "e5b43993c69618c3919370925e21bf85de5b49ee31c055210a70a425af2446a4"),
    ("Microsoft.OuttoADContactJoin.003", "f8283642b77a2780be2c0f4ac3dd778f940d8ab0e941cdba141dd8c5b4dde735"),
    ("Microsoft.OuttoADGroupExchangeHybrid.004", "63b0bbd83e724f37a0960809f7ea8675502cc5f81581d4f16f2828c735cddac9"),
    ("Microsoft.OuttoADGroupJoin.004", "e08c2b58e208b6adb28ce30a094e269db86186b7c0dd813536982cf8ca3d449f"),
    (
        "Microsoft.OuttoADInetOrgPersonExchangeHybrid.003",
        "9b6c5d98fcb12046a58ca2f5be3e388e3bfca54a98519e6a27124c5b7e729d41",
    ),
    ("Microsoft.OuttoADInetOrgPersonJoin.003", "602e1b8e7da8ac410b3d3a830665fc3578e3f1eed1cd135391e7bb3e0b86c2fc"),
    ("Microsoft.OuttoADUserExchangeHybrid.003", "e4528ea3515a1cf23041d6f8c242bf52903ac96713f17e980f10bb40727c5fec"),
    ("Microsoft.OuttoADUserJoinSOAInAD.004", "35a549ff8818651e5dd956eb939ebe6502cbdaf274124cd2d92ba9fc0359ed15"),
];

/// The stem of a Microsoft tag, and its version.
pub fn split_tag(tag: &str) -> Option<(&str, &str)> {
    let rest = tag.strip_prefix("Microsoft.")?;
    Some(rest.rsplit_once('.').unwrap_or((rest, "")))
}

pub fn counterpart(stem: &str) -> Option<Counterpart> {
    STEMS.iter().find(|(s, _)| s.eq_ignore_ascii_case(stem)).map(|(_, c)| *c)
}

/// Whether the rule's content is that version's as installed: `None` when
/// idbridge does not know the version's content.
pub fn unedited(rule: &SyncRule) -> Option<bool> {
    let tag = rule.tag.as_deref()?;
    let known: Vec<&str> = FINGERPRINTS.iter().filter(|(t, _)| *t == tag).map(|(_, f)| *f).collect();
    if known.is_empty() {
        return None;
    }
    let own = fingerprint(rule);
    Some(known.contains(&own.as_str()))
}

/// SHA-256 (hex) of the rule's content in a canonical text: what it does,
/// not where it sits — its name, description, precedence, connector and ids
/// are left out (they differ between installations), mappings are sorted,
/// expressions have their white space squeezed.
pub fn fingerprint(rule: &SyncRule) -> String {
    let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut mappings: Vec<String> = rule.mappings.iter().map(|m| mapping_text(m, &squeeze)).collect();
    mappings.sort();
    let mut text = format!(
        "{:?}|{}|{}|{:?}|{}|{}\n",
        rule.direction,
        rule.source_type.to_ascii_lowercase(),
        rule.target_type.to_ascii_lowercase(),
        rule.link,
        rule.disabled,
        rule.password_sync
    );
    for m in mappings {
        text.push_str(&m);
        text.push('\n');
    }
    for group in &rule.scope {
        text.push_str("scope:");
        for c in group {
            text.push_str(&format!("{}|{}|{};", c.attribute.to_ascii_lowercase(), c.operator, c.value));
        }
        text.push('\n');
    }
    for group in &rule.join {
        text.push_str("join:");
        for c in group {
            text.push_str(&format!(
                "{}|{}|{};",
                c.cs_attribute.to_ascii_lowercase(),
                c.mv_attribute.to_ascii_lowercase(),
                c.case_sensitive
            ));
        }
        text.push('\n');
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn mapping_text(m: &Mapping, squeeze: &dyn Fn(&str) -> String) -> String {
    let flow = match &m.flow {
        Flow::Direct(s) => format!("direct:{}", s.join(",").to_ascii_lowercase()),
        Flow::Constant(c) => format!("constant:{c}"),
        Flow::Expression { expression, sources } => {
            format!("expression:{}:{}", sources.join(",").to_ascii_lowercase(), squeeze(expression))
        }
        Flow::Empty => "empty".into(),
    };
    let merge = match &m.merge {
        MergeType::Update => "update",
        MergeType::Merge => "merge",
        MergeType::MergeCaseInsensitive => "merge-ci",
        MergeType::Other(o) => o.as_str(),
    };
    format!("{}|{flow}|{merge}|{}", m.dest.to_ascii_lowercase(), m.execute_once)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `IDBRIDGE_CONNECT_EXPORT=DIR cargo test -p migrate -- --ignored --nocapture print_fingerprints`
    /// prints the table lines for a real export's out-of-box rules.
    #[test]
    #[ignore]
    fn print_fingerprints() {
        let Some(dir) = std::env::var_os("IDBRIDGE_CONNECT_EXPORT") else { return };
        let export = crate::export::read(std::path::Path::new(&dir)).unwrap();
        let mut lines: Vec<String> = export
            .rules
            .iter()
            .filter_map(|r| Some(format!("    ({:?}, {:?}),", r.tag.as_deref()?, fingerprint(r))))
            .collect();
        lines.sort();
        println!("{}", lines.join("\n"));
    }
}
