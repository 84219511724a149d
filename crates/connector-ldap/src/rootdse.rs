//! The rootDSE: what a server says about itself, and server-kind detection.

use crate::settings::ServerKind;

const AD_CAPABILITY: &str = "1.2.840.113556.1.4.800";
pub const SYNCREPL_CONTROL: &str = "1.3.6.1.4.1.4203.1.9.1.1";
pub const DIRSYNC_CONTROL: &str = "1.2.840.113556.1.4.841";

#[derive(Debug, Clone, Default)]
pub struct RootDse {
    pub naming_contexts: Vec<String>,
    pub default_naming_context: Option<String>,
    pub supported_controls: Vec<String>,
    pub supported_capabilities: Vec<String>,
    pub vendor_name: Option<String>,
    pub vendor_version: Option<String>,
    pub object_classes: Vec<String>,
    pub config_context: Option<String>,
    /// AD: the DN of this DC's NTDS settings object (USN watermarks are per DC).
    pub ds_service_name: Option<String>,
    pub highest_committed_usn: Option<u64>,
    pub dns_host_name: Option<String>,
}

impl RootDse {
    pub const ATTRIBUTES: &'static [&'static str] = &[
        "namingContexts",
        "defaultNamingContext",
        "supportedControl",
        "supportedCapabilities",
        "vendorName",
        "vendorVersion",
        "objectClass",
        "configContext",
        "dsServiceName",
        "highestCommittedUSN",
        "dnsHostName",
    ];

    pub fn from_attrs(attrs: Vec<(String, Vec<Vec<u8>>)>) -> RootDse {
        let mut dse = RootDse::default();
        for (name, values) in attrs {
            let texts: Vec<String> = values.into_iter().map(|v| String::from_utf8_lossy(&v).into_owned()).collect();
            let first = texts.first().cloned();
            match name.to_ascii_lowercase().as_str() {
                "namingcontexts" => dse.naming_contexts = texts,
                "defaultnamingcontext" => dse.default_naming_context = first,
                "supportedcontrol" => dse.supported_controls = texts,
                "supportedcapabilities" => dse.supported_capabilities = texts,
                "vendorname" => dse.vendor_name = first,
                "vendorversion" => dse.vendor_version = first,
                "objectclass" => dse.object_classes = texts,
                "configcontext" => dse.config_context = first,
                "dsservicename" => dse.ds_service_name = first,
                "highestcommittedusn" => dse.highest_committed_usn = first.and_then(|s| s.trim().parse().ok()),
                "dnshostname" => dse.dns_host_name = first,
                _ => {}
            }
        }
        dse
    }

    pub fn kind(&self) -> ServerKind {
        let vendor = self.vendor_name.as_deref().unwrap_or_default().to_ascii_lowercase();
        if self.supported_capabilities.iter().any(|c| c == AD_CAPABILITY) {
            ServerKind::ActiveDirectory
        } else if self.object_classes.iter().any(|c| c.eq_ignore_ascii_case("OpenLDAProotDSE"))
            || self.config_context.as_deref().is_some_and(|c| c.eq_ignore_ascii_case("cn=config"))
                && !vendor.contains("389")
        {
            ServerKind::OpenLdap
        } else if vendor.contains("389 project") || vendor.contains("fedora project") || vendor.contains("red hat") {
            ServerKind::Ds389
        } else {
            ServerKind::Other
        }
    }

    pub fn supports_control(&self, oid: &str) -> bool {
        self.supported_controls.iter().any(|c| c == oid)
    }

    /// A human description for logs and `source dump`.
    pub fn describe(&self) -> String {
        let mut s = self.kind().to_string();
        if let Some(v) = &self.vendor_name {
            s.push_str(&format!(" ({v}"));
            if let Some(ver) = &self.vendor_version {
                s.push_str(&format!(" {ver}"));
            }
            s.push(')');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dse(pairs: &[(&str, &[&str])]) -> RootDse {
        RootDse::from_attrs(
            pairs.iter().map(|(n, vs)| (n.to_string(), vs.iter().map(|v| v.as_bytes().to_vec()).collect())).collect(),
        )
    }

    #[test]
    fn detects_kinds() {
        assert_eq!(dse(&[("supportedCapabilities", &[AD_CAPABILITY])]).kind(), ServerKind::ActiveDirectory);
        assert_eq!(dse(&[("objectClass", &["top", "OpenLDAProotDSE"])]).kind(), ServerKind::OpenLdap);
        assert_eq!(dse(&[("vendorName", &["389 Project"])]).kind(), ServerKind::Ds389);
        assert_eq!(dse(&[("vendorName", &["Acme"])]).kind(), ServerKind::Other);
        assert_eq!(dse(&[("highestCommittedUSN", &["4242"])]).highest_committed_usn, Some(4242));
    }
}
