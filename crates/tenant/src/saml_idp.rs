//! The tenant as a SAML 2.0 identity provider — its signing core: a
//! self-signed X.509 certificate for each RSA signing key (what a service
//! provider pins from the metadata; the certificate only carries the key, as
//! in every SAML deployment), and Responses whose Assertion (and, per
//! application, the Response too) carry an enveloped XML signature:
//! Exclusive XML Canonicalization (the `xmldoc` crate, shared with the
//! service-provider side), SHA-256 digest, RSA-SHA256.
//!
//! The XML is written here from our own values (each escaped), parsed back
//! with `xmldoc` to canonicalise exactly what is sent, and the signature is
//! put after the `Issuer`, where the schema wants it.

use std::fmt::Write as _;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::error::{Result, TenantError};
use crate::oidc::keys::SigningKey;

const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
const SHA256: &str = "http://www.w3.org/2001/04/xmlenc#sha256";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
pub const ASSERTION_NS: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
pub const PROTOCOL_NS: &str = "urn:oasis:names:tc:SAML:2.0:protocol";

fn invalid(what: impl std::fmt::Display) -> TenantError {
    TenantError::Invalid(format!("SAML signing: {what}"))
}

/// XML text escaping for element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            other => out.push(other),
        }
    }
    out
}

/// A self-signed certificate (DER) for `key`: subject and issuer `CN=name`,
/// valid from `not_before` to `not_after` (Unix seconds), serial from the
/// key id.
pub fn certificate(key: &SigningKey, name: &str, not_before: i64, not_after: i64) -> Result<Vec<u8>> {
    use x509_cert::der::asn1::BitString;
    use x509_cert::der::{Decode, Encode};
    use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
    let spki = SubjectPublicKeyInfoOwned::from_der(&key.public_key_der()?).map_err(invalid)?;
    let algorithm = AlgorithmIdentifierOwned {
        // sha256WithRSAEncryption, parameters NULL (RFC 4055).
        oid: x509_cert::der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11"),
        parameters: Some(x509_cert::der::asn1::Null.into()),
    };
    let cn: x509_cert::name::Name =
        format!("CN={}", name.replace([',', '+', '=', '\\', '"', '<', '>', ';'], " ")).parse().map_err(invalid)?;
    let time = |secs: i64| -> Result<x509_cert::time::Time> {
        let secs = u64::try_from(secs).map_err(|_| invalid("a time before 1970"))?;
        let t = x509_cert::der::asn1::GeneralizedTime::from_unix_duration(std::time::Duration::from_secs(secs))
            .map_err(invalid)?;
        Ok(x509_cert::time::Time::GeneralTime(t))
    };
    let mut serial: Vec<u8> = key.kid.bytes().filter(u8::is_ascii_hexdigit).take(30).collect();
    serial = serial
        .chunks(2)
        .filter_map(|pair| std::str::from_utf8(pair).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    // A positive INTEGER: its first byte below 0x80.
    serial.insert(0, 0x01);
    let tbs = x509_cert::TbsCertificate {
        version: x509_cert::Version::V3,
        serial_number: x509_cert::serial_number::SerialNumber::new(&serial).map_err(invalid)?,
        signature: algorithm.clone(),
        issuer: cn.clone(),
        validity: x509_cert::time::Validity { not_before: time(not_before)?, not_after: time(not_after)? },
        subject: cn,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: None,
    };
    let signed = key.sign(&tbs.to_der().map_err(invalid)?)?;
    let cert = x509_cert::Certificate {
        tbs_certificate: tbs,
        signature_algorithm: algorithm,
        signature: BitString::from_bytes(&signed).map_err(invalid)?,
    };
    cert.to_der().map_err(invalid)
}

/// `xml` (one element whose `ID` is `id`, the XML we wrote) with an
/// enveloped signature inserted after its first child element `after`
/// (the Issuer): the digest covers the element as it is without the
/// signature, the signature covers the canonical SignedInfo.
pub fn sign_enveloped(xml: &str, id: &str, after: &str, key: &SigningKey, certificate: &[u8]) -> Result<String> {
    let element = xmldoc::parse(xml).map_err(invalid)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, xmldoc::exc_c14n(&element, None, &[]).as_bytes());
    let signed_info = format!(
        "<ds:SignedInfo xmlns:ds=\"{DSIG}\"><ds:CanonicalizationMethod Algorithm=\"{EXC_C14N}\"/>\
         <ds:SignatureMethod Algorithm=\"{RSA_SHA256}\"/><ds:Reference URI=\"#{}\"><ds:Transforms>\
         <ds:Transform Algorithm=\"{ENVELOPED}\"/><ds:Transform Algorithm=\"{EXC_C14N}\"/></ds:Transforms>\
         <ds:DigestMethod Algorithm=\"{SHA256}\"/><ds:DigestValue>{}</ds:DigestValue></ds:Reference></ds:SignedInfo>",
        escape(id),
        STANDARD.encode(digest.as_ref())
    );
    let canonical = xmldoc::exc_c14n(&xmldoc::parse(&signed_info).map_err(invalid)?, None, &[]);
    let value = STANDARD.encode(key.sign(canonical.as_bytes())?);
    // Inside the Signature the ds prefix is declared once, on Signature.
    let inner = signed_info.replacen(&format!(" xmlns:ds=\"{DSIG}\""), "", 1);
    let signature = format!(
        "<ds:Signature xmlns:ds=\"{DSIG}\">{inner}<ds:SignatureValue>{value}</ds:SignatureValue>\
         <ds:KeyInfo><ds:X509Data><ds:X509Certificate>{}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></ds:Signature>",
        STANDARD.encode(certificate)
    );
    let at = xml.find(after).map(|i| i + after.len()).ok_or_else(|| invalid(format!("no {after} to sign after")))?;
    let (head, tail) = xml.split_at(at);
    Ok(format!("{head}{signature}{tail}"))
}

/// What one Response says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseParams {
    /// The IdP's entity id (its metadata URL).
    pub issuer: String,
    /// The service provider's entity id.
    pub audience: String,
    /// The ACS URL the response is posted to.
    pub destination: String,
    /// The AuthnRequest's ID (SP-initiated), none for IdP-initiated.
    pub in_response_to: Option<String>,
    pub name_id: String,
    /// `urn:oasis:names:tc:SAML:2.0:nameid-format:persistent`, `…:1.1:nameid-format:emailAddress` …
    pub name_id_format: String,
    pub session_index: String,
    /// Unix seconds.
    pub issued_at: i64,
    pub authn_instant: i64,
    /// How long the assertion may be used.
    pub lifetime_secs: i64,
    /// `urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport` …
    pub authn_context_class: String,
    /// (name, values) in order.
    pub attributes: Vec<(String, Vec<String>)>,
}

fn instant(secs: i64) -> Result<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(secs).map_err(invalid)?;
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&f).map_err(invalid)
}

/// A fresh XML ID (an NCName: it starts with a letter or underscore).
pub fn new_id() -> String {
    format!("_{}", crate::util::new_id().replace('-', ""))
}

/// A signed Response: the Assertion always signed, the Response too when
/// `sign_response`. `(response_id, assertion_id, xml)`.
pub fn response(
    p: &ResponseParams,
    key: &SigningKey,
    cert: &[u8],
    sign_response: bool,
) -> Result<(String, String, String)> {
    let (response_id, assertion_id) = (new_id(), new_id());
    let issued = instant(p.issued_at)?;
    let not_before = instant(p.issued_at - 60)?;
    let not_after = instant(p.issued_at + p.lifetime_secs)?;
    let in_response =
        p.in_response_to.as_deref().map(|r| format!(" InResponseTo=\"{}\"", escape(r))).unwrap_or_default();
    let mut attributes = String::new();
    for (name, values) in &p.attributes {
        let _ = write!(
            attributes,
            "<saml:Attribute Name=\"{}\" NameFormat=\"urn:oasis:names:tc:SAML:2.0:attrname-format:basic\">",
            escape(name)
        );
        for v in values {
            let _ = write!(attributes, "<saml:AttributeValue>{}</saml:AttributeValue>", escape(v));
        }
        attributes.push_str("</saml:Attribute>");
    }
    let statement = if attributes.is_empty() {
        String::new()
    } else {
        format!("<saml:AttributeStatement>{attributes}</saml:AttributeStatement>")
    };
    let assertion = format!(
        "<saml:Assertion xmlns:saml=\"{ASSERTION_NS}\" ID=\"{assertion_id}\" IssueInstant=\"{issued}\" Version=\"2.0\">\
         <saml:Issuer>{issuer}</saml:Issuer>\
         <saml:Subject><saml:NameID Format=\"{format}\">{name_id}</saml:NameID>\
         <saml:SubjectConfirmation Method=\"urn:oasis:names:tc:SAML:2.0:cm:bearer\">\
         <saml:SubjectConfirmationData{in_response} NotOnOrAfter=\"{not_after}\" Recipient=\"{destination}\"/>\
         </saml:SubjectConfirmation></saml:Subject>\
         <saml:Conditions NotBefore=\"{not_before}\" NotOnOrAfter=\"{not_after}\">\
         <saml:AudienceRestriction><saml:Audience>{audience}</saml:Audience></saml:AudienceRestriction></saml:Conditions>\
         <saml:AuthnStatement AuthnInstant=\"{authn}\" SessionIndex=\"{session}\">\
         <saml:AuthnContext><saml:AuthnContextClassRef>{class}</saml:AuthnContextClassRef></saml:AuthnContext>\
         </saml:AuthnStatement>{statement}</saml:Assertion>",
        issuer = escape(&p.issuer),
        format = escape(&p.name_id_format),
        name_id = escape(&p.name_id),
        destination = escape(&p.destination),
        audience = escape(&p.audience),
        authn = instant(p.authn_instant)?,
        session = escape(&p.session_index),
        class = escape(&p.authn_context_class),
    );
    let assertion = sign_enveloped(&assertion, &assertion_id, "</saml:Issuer>", key, cert)?;
    let response = format!(
        "<samlp:Response xmlns:samlp=\"{PROTOCOL_NS}\" xmlns:saml=\"{ASSERTION_NS}\" ID=\"{response_id}\" Version=\"2.0\" \
         IssueInstant=\"{issued}\" Destination=\"{destination}\"{in_response}>\
         <saml:Issuer>{issuer}</saml:Issuer>\
         <samlp:Status><samlp:StatusCode Value=\"urn:oasis:names:tc:SAML:2.0:status:Success\"/></samlp:Status>\
         {assertion}</samlp:Response>",
        destination = escape(&p.destination),
        issuer = escape(&p.issuer),
    );
    let response =
        if sign_response { sign_enveloped(&response, &response_id, "</saml:Issuer>", key, cert)? } else { response };
    Ok((response_id, assertion_id, response))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oidc::keys::{self, Alg};

    fn params() -> ResponseParams {
        ResponseParams {
            issuer: "https://login.example.com/saml/crm/metadata".into(),
            audience: "https://crm.example.net/sp".into(),
            destination: "https://crm.example.net/acs?x=1&y=<2>".into(),
            in_response_to: Some("_req-1".into()),
            name_id: "3b6c0f0e9a".into(),
            name_id_format: "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent".into(),
            session_index: "_s1".into(),
            issued_at: crate::util::now_secs(),
            authn_instant: crate::util::now_secs(),
            lifetime_secs: 300,
            authn_context_class: "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport".into(),
            attributes: vec![
                ("displayName".into(), vec!["Zoë Öberg & Co".into()]),
                ("groups".into(), vec!["Équipe".into(), "東京".into()]),
            ],
        }
    }

    /// xmlsec1 (Debian's, from the XML Security Library — code no one here
    /// wrote) verifies the Assertion's and the Response's signatures with the
    /// certificate; one changed character makes it refuse.
    #[test]
    fn xmlsec1_verifies_what_we_sign() {
        testkit::require_tool("xmlsec1", "xmlsec1").unwrap();
        let dir = std::env::temp_dir().join(format!("idbridge-saml-idp-{}", crate::util::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = crate::Store::open(&dir.join("tenant.db")).unwrap();
        let conn = store.lock();
        let key = keys::rotate(&conn, Alg::Rs256).unwrap();
        let now = crate::util::now_secs();
        let cert = certificate(&key, "idbridge tenant, login.example.com", now - 60, now + 3 * 365 * 86400).unwrap();
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            STANDARD
                .encode(&cert)
                .as_bytes()
                .chunks(64)
                .map(|c| String::from_utf8_lossy(c).to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::fs::write(dir.join("cert.pem"), &pem).unwrap();
        // openssl reads the certificate: a self-signed X.509 v3 with our subject.
        let text = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(dir.join("cert.pem"))
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&text.stdout).contains("idbridge tenant  login.example.com"), "{text:?}");
        let verify = |xml: &str, node: &str| {
            std::fs::write(dir.join("response.xml"), xml).unwrap();
            std::process::Command::new("xmlsec1")
                .args(["--verify", "--pubkey-cert-pem"])
                .arg(dir.join("cert.pem"))
                .args(["--id-attr:ID", node, "--node-xpath"])
                .arg(format!(
                    "//*[local-name()='{}']/*[local-name()='Signature']",
                    node.rsplit(':').next().unwrap_or(node)
                ))
                .arg(dir.join("response.xml"))
                .output()
                .unwrap()
        };
        for sign_response in [false, true] {
            let (_, _, xml) = response(&params(), &key, &cert, sign_response).unwrap();
            let checked = verify(&xml, "urn:oasis:names:tc:SAML:2.0:assertion:Assertion");
            assert!(checked.status.success(), "assertion: {}\n{xml}", String::from_utf8_lossy(&checked.stderr));
            if sign_response {
                let checked = verify(&xml, "urn:oasis:names:tc:SAML:2.0:protocol:Response");
                assert!(checked.status.success(), "response: {}\n{xml}", String::from_utf8_lossy(&checked.stderr));
            }
            // One character changed in a signed value: refused.
            let forged = xml.replacen("Zoë Öberg", "Zoe Öberg", 1);
            assert!(!verify(&forged, "urn:oasis:names:tc:SAML:2.0:assertion:Assertion").status.success());
        }
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
