//! The tenant as a SAML 2.0 service provider (Web Browser SSO): an
//! AuthnRequest by HTTP-Redirect, a Response by HTTP-POST, checked
//! completely — the XML signature (exclusive canonicalisation, RSA-SHA256/512
//! with the configured certificate only) over the Response or the Assertion,
//! exactly one Assertion, issuer, audience, recipient, InResponseTo and the
//! validity window — and only what the signature covers is read.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::CertificateDer;

use super::{CLOCK_SKEW_SECS, Refusal};
use xmldoc::{self as xml, Element, escape};

const SAMLP: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
const SAML: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
const PERSISTENT: &str = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent";

/// What the service provider expects of a Response.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// The IdP's entity id (the Issuer).
    pub idp_entity_id: &'a str,
    /// PEM or DER certificates of the IdP's signing keys.
    pub certificates: &'a [Vec<u8>],
    /// Our entity id (the Audience).
    pub sp_entity_id: &'a str,
    /// Our assertion consumer service URL (Recipient, Destination).
    pub acs_url: &'a str,
    /// The ID of our AuthnRequest.
    pub request_id: &'a str,
    pub now: i64,
}

/// What a checked assertion says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asserted {
    pub assertion_id: String,
    /// The persistent NameID (the immutableId), if that is its format.
    pub persistent_id: Option<String>,
    pub name_id: String,
    /// Attribute name → first value.
    pub attributes: Vec<(String, String)>,
    /// Until when the assertion id must be remembered against replay.
    pub valid_until: i64,
    /// How the IdP authenticated the person: its AuthnStatement's
    /// AuthnContextClassRef, if any.
    pub authn_context: Option<String>,
}

/// An AuthnRequest for the HTTP-Redirect binding: the `SAMLRequest` value.
pub fn authn_request(id: &str, sp_entity_id: &str, acs_url: &str, destination: &str, now: i64) -> String {
    let xml = format!(
        "<samlp:AuthnRequest xmlns:samlp=\"{SAMLP}\" xmlns:saml=\"{SAML}\" ID=\"{id}\" Version=\"2.0\" IssueInstant=\"{}\" \
         Destination=\"{}\" AssertionConsumerServiceURL=\"{}\" ProtocolBinding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\">\
         <saml:Issuer>{}</saml:Issuer><samlp:NameIDPolicy Format=\"{PERSISTENT}\" AllowCreate=\"true\"/></samlp:AuthnRequest>",
        instant(now),
        escape(destination),
        escape(acs_url),
        escape(sp_entity_id)
    );
    let deflated = miniz_oxide::deflate::compress_to_vec(xml.as_bytes(), 6);
    STANDARD.encode(deflated)
}

/// xs:dateTime in UTC.
fn instant(secs: i64) -> String {
    crate::util::rfc3339(secs, 0)
}

fn parse_instant(text: &str) -> Result<i64, Refusal> {
    crate::util::parse_rfc3339(text.trim())
        .ok_or_else(|| Refusal::Malformed(format!("{text:?} is not a date and time")))
}

/// Checks a base64 `SAMLResponse` completely; what its one assertion says.
pub fn check_response(encoded: &str, expected: &Expected<'_>) -> Result<Asserted, Refusal> {
    // Base64 of the largest document the XML reader takes, with line breaks.
    if encoded.len() > xml::LIMITS.max_bytes / 3 * 4 * 2 {
        return Err(Refusal::Malformed("SAMLResponse is too large".into()));
    }
    let compact: String = encoded.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = STANDARD.decode(compact).map_err(|_| Refusal::Malformed("SAMLResponse is not base64".into()))?;
    let text = String::from_utf8(bytes).map_err(|_| Refusal::Malformed("SAMLResponse is not UTF-8".into()))?;
    let root = xml::parse(&text).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if !root.is(SAMLP, "Response") {
        return Err(Refusal::Malformed(format!("the document is a {}, not a samlp:Response", root.local)));
    }
    let all = root.descendants();
    // IDs are unique, or a signature reference could mean two elements.
    let mut ids: Vec<&str> = all.iter().filter_map(|e| e.attr("ID")).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(Refusal::BadSignature("two elements share one ID".into()));
    }
    if all.iter().any(|e| e.is(SAML, "EncryptedAssertion")) {
        return Err(Refusal::Malformed("encrypted assertions are not supported".into()));
    }
    let assertions = all.iter().filter(|e| e.is(SAML, "Assertion")).count();
    // The one assertion is a direct child of the Response: one placed
    // elsewhere (inside the Signature's ds:Object, say) is outside what the
    // Response's signature covers the way a reader expects.
    let direct: Vec<&Element> = root.elements().filter(|e| e.is(SAML, "Assertion")).collect();
    let [assertion] = direct.as_slice() else {
        return Err(Refusal::Malformed(format!(
            "the response holds {assertions} assertions ({} directly in the Response); exactly one, directly in it, is accepted",
            direct.len()
        )));
    };
    if assertions != 1 {
        return Err(Refusal::Malformed(format!("the response holds {assertions} assertions; exactly one is accepted")));
    }
    let assertion: &Element = assertion;
    // The status first: a refusal by the IdP is not a forgery.
    let status = root
        .child(SAMLP, "Status")
        .and_then(|s| s.child(SAMLP, "StatusCode"))
        .and_then(|c| c.attr("Value"))
        .unwrap_or_default();
    if status != SUCCESS {
        return Err(Refusal::IdpError(format!("status {status}")));
    }
    // A signature on the Response covers the assertion inside; otherwise the assertion must be signed.
    let response_signed = verify_enveloped(&root, expected.certificates)?;
    let assertion_signed = verify_enveloped(assertion, expected.certificates)?;
    if !response_signed && !assertion_signed {
        return Err(Refusal::BadSignature("neither the response nor the assertion is signed".into()));
    }
    if let Some(destination) = root.attr("Destination")
        && destination != expected.acs_url
    {
        return Err(Refusal::WrongAudience {
            expected: expected.acs_url.into(),
            got: format!("Destination {destination:?}"),
        });
    }
    if let Some(in_response_to) = root.attr("InResponseTo")
        && in_response_to != expected.request_id
    {
        return Err(Refusal::UnknownState);
    }
    let issuer = assertion.child(SAML, "Issuer").map(Element::text).unwrap_or_default();
    if issuer.trim() != expected.idp_entity_id {
        return Err(Refusal::WrongIssuer { expected: expected.idp_entity_id.into(), got: issuer });
    }
    let conditions = assertion.child(SAML, "Conditions").ok_or_else(|| Refusal::Malformed("no Conditions".into()))?;
    let mut valid_until = i64::MAX;
    if let Some(nb) = conditions.attr("NotBefore")
        && parse_instant(nb)? > expected.now + CLOCK_SKEW_SECS
    {
        return Err(Refusal::NotYetValid);
    }
    if let Some(noa) = conditions.attr("NotOnOrAfter") {
        let noa = parse_instant(noa)?;
        if expected.now >= noa + CLOCK_SKEW_SECS {
            return Err(Refusal::Expired);
        }
        valid_until = valid_until.min(noa + CLOCK_SKEW_SECS);
    }
    // Each AudienceRestriction must name us (SAML core §2.5.1.4: they all apply).
    let restrictions: Vec<Vec<String>> = conditions
        .elements()
        .filter(|e| e.is(SAML, "AudienceRestriction"))
        .map(|r| r.elements().filter(|a| a.is(SAML, "Audience")).map(|a| a.text().trim().to_string()).collect())
        .collect();
    if restrictions.is_empty() || !restrictions.iter().all(|r| r.iter().any(|a| a == expected.sp_entity_id)) {
        return Err(Refusal::WrongAudience {
            expected: expected.sp_entity_id.into(),
            got: format!("{restrictions:?}"),
        });
    }
    let subject = assertion.child(SAML, "Subject").ok_or_else(|| Refusal::Malformed("no Subject".into()))?;
    let bearer = subject
        .elements()
        .filter(|c| {
            c.is(SAML, "SubjectConfirmation") && c.attr("Method") == Some("urn:oasis:names:tc:SAML:2.0:cm:bearer")
        })
        .filter_map(|c| c.child(SAML, "SubjectConfirmationData"))
        .next()
        .ok_or_else(|| Refusal::Malformed("no bearer SubjectConfirmation".into()))?;
    if bearer.attr("Recipient") != Some(expected.acs_url) {
        return Err(Refusal::WrongAudience {
            expected: expected.acs_url.into(),
            got: format!("Recipient {:?}", bearer.attr("Recipient").unwrap_or_default()),
        });
    }
    if bearer.attr("InResponseTo") != Some(expected.request_id) {
        return Err(Refusal::UnknownState);
    }
    let noa = bearer.attr("NotOnOrAfter").ok_or_else(|| Refusal::Malformed("no NotOnOrAfter on the bearer".into()))?;
    let noa = parse_instant(noa)?;
    if expected.now >= noa + CLOCK_SKEW_SECS {
        return Err(Refusal::Expired);
    }
    valid_until = valid_until.min(noa + CLOCK_SKEW_SECS);
    let name_id = subject.child(SAML, "NameID").ok_or_else(|| Refusal::Malformed("no NameID".into()))?;
    let name = name_id.text().trim().to_string();
    let persistent_id = (name_id.attr("Format") == Some(PERSISTENT)).then(|| name.clone());
    let attributes = assertion
        .elements()
        .filter(|e| e.is(SAML, "AttributeStatement"))
        .flat_map(|s| s.elements().filter(|a| a.is(SAML, "Attribute")))
        .filter_map(|a| {
            let value = a.child(SAML, "AttributeValue")?.text().trim().to_string();
            Some((a.attr("Name")?.to_string(), value))
        })
        .collect();
    let assertion_id = assertion.attr("ID").ok_or_else(|| Refusal::Malformed("the assertion has no ID".into()))?;
    let authn_context = assertion
        .elements()
        .filter(|e| e.is(SAML, "AuthnStatement"))
        .filter_map(|s| s.child(SAML, "AuthnContext")?.child(SAML, "AuthnContextClassRef"))
        .map(|c| c.text().trim().to_string())
        .next();
    Ok(Asserted {
        assertion_id: assertion_id.to_string(),
        persistent_id,
        name_id: name,
        attributes,
        valid_until,
        authn_context,
    })
}

/// Whether `element` carries a valid enveloped signature of itself (a
/// `ds:Signature` child whose one reference is `#<its ID>`). A signature
/// that is there but does not verify is an error, not "unsigned".
pub(crate) fn verify_enveloped(element: &Element, certificates: &[Vec<u8>]) -> Result<bool, Refusal> {
    let signatures: Vec<&Element> = element.elements().filter(|e| e.is(DSIG, "Signature")).collect();
    let signature = match signatures.as_slice() {
        [] => return Ok(false),
        [one] => *one,
        _ => return Err(Refusal::BadSignature(format!("{} has more than one signature", element.local))),
    };
    let fail = |why: &str| Refusal::BadSignature(format!("the signature on the {}: {why}", element.local));
    let signed_info = signature.child(DSIG, "SignedInfo").ok_or_else(|| fail("no SignedInfo"))?;
    let c14n = signed_info.child(DSIG, "CanonicalizationMethod").and_then(|m| m.attr("Algorithm"));
    if c14n != Some(EXC_C14N) {
        return Err(fail(&format!("canonicalization {c14n:?} is not accepted (only exclusive c14n)")));
    }
    let method = signed_info.child(DSIG, "SignatureMethod").and_then(|m| m.attr("Algorithm")).unwrap_or_default();
    let algorithm: &dyn rustls_pki_types::SignatureVerificationAlgorithm = match method {
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256" => webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512" => webpki::ring::RSA_PKCS1_2048_8192_SHA512,
        other => return Err(fail(&format!("signature method {other:?} is not accepted (RSA-SHA256/512)"))),
    };
    let references: Vec<&Element> = signed_info.elements().filter(|e| e.is(DSIG, "Reference")).collect();
    let [reference] = references.as_slice() else {
        return Err(fail("exactly one Reference is accepted"));
    };
    let id = element.attr("ID").ok_or_else(|| fail("the signed element has no ID"))?;
    if reference.attr("URI") != Some(&format!("#{id}")) {
        return Err(fail("it does not refer to the element it is in"));
    }
    let mut inclusive = Vec::new();
    if let Some(transforms) = reference.child(DSIG, "Transforms") {
        for t in transforms.elements().filter(|e| e.is(DSIG, "Transform")) {
            match t.attr("Algorithm") {
                Some(ENVELOPED) => {}
                Some(EXC_C14N) => inclusive = prefix_list(t),
                other => return Err(fail(&format!("transform {other:?} is not accepted"))),
            }
        }
    }
    let digest_method = reference.child(DSIG, "DigestMethod").and_then(|m| m.attr("Algorithm")).unwrap_or_default();
    let digest_alg = match digest_method {
        "http://www.w3.org/2001/04/xmlenc#sha256" => &ring::digest::SHA256,
        "http://www.w3.org/2001/04/xmlenc#sha512" => &ring::digest::SHA512,
        other => return Err(fail(&format!("digest {other:?} is not accepted (SHA-256/512)"))),
    };
    let digest_value = reference.child(DSIG, "DigestValue").map(|d| d.text()).unwrap_or_default();
    let claimed = STANDARD
        .decode(digest_value.split_whitespace().collect::<String>())
        .map_err(|_| fail("the digest is not base64"))?;
    let canonical = xml::exc_c14n(element, Some(signature), &inclusive);
    if ring::digest::digest(digest_alg, canonical.as_bytes()).as_ref() != claimed.as_slice() {
        return Err(fail("the digest does not match: the signed content was changed"));
    }
    let si_inclusive = signed_info.child(DSIG, "CanonicalizationMethod").map(prefix_list).unwrap_or_default();
    let signed_bytes = xml::exc_c14n(signed_info, None, &si_inclusive);
    let value = signature.child(DSIG, "SignatureValue").map(|v| v.text()).unwrap_or_default();
    let value =
        STANDARD.decode(value.split_whitespace().collect::<String>()).map_err(|_| fail("the value is not base64"))?;
    for cert in certificates {
        let der = CertificateDer::from(cert.as_slice());
        let Ok(cert) = webpki::EndEntityCert::try_from(&der) else { continue };
        if cert.verify_signature(algorithm, signed_bytes.as_bytes(), &value).is_ok() {
            return Ok(true);
        }
    }
    Err(fail("it was not made with the identity provider's signing key"))
}

fn prefix_list(transform: &Element) -> Vec<String> {
    transform
        .elements()
        .find(|e| e.is(EXC_C14N, "InclusiveNamespaces"))
        .and_then(|e| e.attr("PrefixList"))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// (entity id, HTTP-Redirect SSO URL, signing certificates as PEM) from an
/// IdP's SAML metadata document.
pub fn from_metadata(text: &str) -> Result<(String, String, String), String> {
    const MD: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
    let root = xml::parse(text).map_err(|e| e.to_string())?;
    let entity =
        root.descendants().into_iter().find(|e| e.is(MD, "EntityDescriptor")).ok_or("no md:EntityDescriptor")?;
    let entity_id = entity.attr("entityID").ok_or("the EntityDescriptor has no entityID")?.to_string();
    let idp = entity.child(MD, "IDPSSODescriptor").ok_or("no md:IDPSSODescriptor")?;
    let sso = idp
        .elements()
        .filter(|e| e.is(MD, "SingleSignOnService"))
        .find(|e| e.attr("Binding") == Some("urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"))
        .and_then(|e| e.attr("Location"))
        .ok_or("no SingleSignOnService with the HTTP-Redirect binding")?
        .to_string();
    let mut pem = String::new();
    for key in idp.elements().filter(|e| e.is(MD, "KeyDescriptor") && e.attr("use") != Some("encryption")) {
        for cert in key.descendants().into_iter().filter(|e| e.is(DSIG, "X509Certificate")) {
            let b64: String = cert.text().split_whitespace().collect();
            pem.push_str("-----BEGIN CERTIFICATE-----\n");
            for line in b64.as_bytes().chunks(64) {
                pem.push_str(std::str::from_utf8(line).unwrap_or_default());
                pem.push('\n');
            }
            pem.push_str("-----END CERTIFICATE-----\n");
        }
    }
    if pem.is_empty() {
        return Err("no signing certificate (KeyDescriptor/X509Certificate)".into());
    }
    Ok((entity_id, sso, pem))
}

/// DER certificates from PEM text (or DER bytes as they are).
pub fn certificates_from(bytes: &[u8]) -> Vec<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let pem: Vec<Vec<u8>> =
        CertificateDer::pem_slice_iter(bytes).filter_map(std::result::Result::ok).map(|c| c.to_vec()).collect();
    if pem.is_empty() { vec![bytes.to_vec()] } else { pem }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_entity_sso_and_signing_certificate() {
        let md = r#"<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID="https://idp.example/saml">
          <md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
            <md:KeyDescriptor use="encryption"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>RU5D</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>
            <md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>
              U0lHTg==
            </ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>
            <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="https://idp.example/post"/>
            <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="https://idp.example/sso"/>
          </md:IDPSSODescriptor></md:EntityDescriptor>"#;
        let (entity, sso, pem) = from_metadata(md).unwrap();
        assert_eq!((entity.as_str(), sso.as_str()), ("https://idp.example/saml", "https://idp.example/sso"));
        assert_eq!(pem, "-----BEGIN CERTIFICATE-----\nU0lHTg==\n-----END CERTIFICATE-----\n", "the signing key only");
        assert!(from_metadata("<x/>").is_err());
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        let expected = Expected {
            idp_entity_id: "i",
            certificates: &[],
            sp_entity_id: "s",
            acs_url: "a",
            request_id: "r",
            now: 0,
        };
        for input in [
            "",
            "!!!",
            "PHg+",
            "PHNhbWxwOlJlc3BvbnNlIHhtbG5zOnNhbWxwPSJ1cm46b2FzaXM6bmFtZXM6dGM6U0FNTDoyLjA6cHJvdG9jb2wiLz4=",
        ] {
            assert!(check_response(input, &expected).is_err(), "{input}");
        }
    }
}
