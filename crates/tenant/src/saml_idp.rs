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
use xmldoc::escape;

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

// ---- Applications ----

/// How the NameID names the person to an application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameIdFormat {
    /// Stable per user and application, not the user name (a keyed hash).
    Persistent,
    /// The user name.
    Email,
    /// The user name, format left unspecified.
    Unspecified,
}

impl NameIdFormat {
    pub fn urn(self) -> &'static str {
        match self {
            NameIdFormat::Persistent => "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
            NameIdFormat::Email => "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
            NameIdFormat::Unspecified => "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            NameIdFormat::Persistent => "persistent",
            NameIdFormat::Email => "email",
            NameIdFormat::Unspecified => "unspecified",
        }
    }

    pub fn parse(text: &str) -> Option<NameIdFormat> {
        match text.to_ascii_lowercase().as_str() {
            "persistent" => Some(NameIdFormat::Persistent),
            "email" | "emailaddress" => Some(NameIdFormat::Email),
            "unspecified" => Some(NameIdFormat::Unspecified),
            _ => None,
        }
    }
}

/// A service provider the tenant signs people in to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// Short name in its URLs (`/saml/{id}/…`): letters, digits, '-'.
    pub id: String,
    pub name: String,
    /// The SP's entity id (the Issuer of its AuthnRequests, our Audience).
    pub entity_id: String,
    /// Where responses may be posted, exactly; the first is the default.
    pub acs_urls: Vec<String>,
    pub name_id_format: NameIdFormat,
    /// (attribute name sent, the user's attribute: userName, displayName,
    /// name.givenName, name.familyName, emails, hybrid:immutableId, …).
    pub attributes: Vec<(String, String)>,
    /// Sign the Response as well as the Assertion.
    pub sign_response: bool,
    /// Who may use it: members (directly or nested) of these groups, by
    /// display name or id; everyone when empty.
    pub allowed_groups: Vec<String>,
    /// AuthnRequests must be signed with one of `sp_certificates` (DER).
    pub require_signed: bool,
    pub sp_certificates: Vec<Vec<u8>>,
    /// Where LogoutResponses go (HTTP-Redirect); without one, a Single
    /// Logout ends on the tenant's "signed out" page.
    pub slo_url: Option<String>,
}

/// The attributes an application gets when none are configured.
pub fn default_attributes() -> Vec<(String, String)> {
    [
        ("email", "userName"),
        ("displayName", "displayName"),
        ("givenName", "name.givenName"),
        ("surname", "name.familyName"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect()
}

/// Adds an application (checked: its id, an entity id, ACS URLs that are
/// https — or http on this machine —, an entity id no other app has).
pub fn add_app(conn: &crate::db::Connection, app: &App) -> Result<()> {
    if app.id.is_empty() || app.id.len() > 64 || !app.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(TenantError::Invalid(format!("application id {:?}: letters, digits and '-' only", app.id)));
    }
    if app.name.trim().is_empty() || app.name.chars().count() > 128 {
        return Err(TenantError::Invalid(
            "the application's display name is empty or longer than 128 characters".into(),
        ));
    }
    if app.entity_id.trim().is_empty() || app.entity_id.len() > 1024 {
        return Err(TenantError::Invalid("the service provider's entity id is empty or too long".into()));
    }
    if app.acs_urls.is_empty() {
        return Err(TenantError::Invalid("give at least one Assertion Consumer Service URL".into()));
    }
    for url in &app.acs_urls {
        crate::util::check_web_url(url).map_err(|e| TenantError::Invalid(format!("ACS URL {url:?}: {e}")))?;
    }
    if let Some(url) = &app.slo_url {
        crate::util::check_web_url(url).map_err(|e| TenantError::Invalid(format!("logout URL {url:?}: {e}")))?;
    }
    let exists: Option<String> = crate::db::OptionalExtension::optional(conn.query_row(
        "SELECT id FROM saml_apps WHERE id = ?1 OR entity_id = ?2",
        crate::db::params![app.id, app.entity_id],
        |r| r.get(0),
    ))?;
    if let Some(other) = exists {
        return Err(TenantError::Invalid(format!("application {other} has that id or entity id already")));
    }
    let attributes: Vec<serde_json::Value> =
        app.attributes.iter().map(|(n, s)| serde_json::json!({"name": n, "source": s})).collect();
    conn.execute(
        "INSERT INTO saml_apps(id, name, entity_id, acs_urls, name_id_format, attributes, sign_response, allowed_groups, require_signed, sp_certificates, created, slo_url) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        crate::db::params![
            app.id,
            app.name,
            app.entity_id,
            serde_json::to_string(&app.acs_urls).unwrap_or_default(),
            app.name_id_format.word(),
            serde_json::Value::Array(attributes).to_string(),
            app.sign_response,
            serde_json::to_string(&app.allowed_groups).unwrap_or_default(),
            app.require_signed,
            serde_json::to_string(&app.sp_certificates.iter().map(|c| STANDARD.encode(c)).collect::<Vec<_>>())
                .unwrap_or_default(),
            crate::util::now_secs(),
            app.slo_url
        ],
    )?;
    Ok(())
}

type AppRow = (String, String, String, String, String, String, bool, String, bool, String, Option<String>);

fn to_app(
    (id, name, entity_id, acs, format, attributes, sign_response, allowed, require_signed, certs, slo_url): AppRow,
) -> App {
    let certs: Vec<String> = serde_json::from_str(&certs).unwrap_or_default();
    let attributes: Vec<serde_json::Value> = serde_json::from_str(&attributes).unwrap_or_default();
    App {
        id,
        name,
        entity_id,
        acs_urls: serde_json::from_str(&acs).unwrap_or_default(),
        name_id_format: NameIdFormat::parse(&format).unwrap_or(NameIdFormat::Persistent),
        attributes: attributes
            .iter()
            .filter_map(|a| Some((a.get("name")?.as_str()?.to_string(), a.get("source")?.as_str()?.to_string())))
            .collect(),
        sign_response,
        allowed_groups: serde_json::from_str(&allowed).unwrap_or_default(),
        require_signed,
        sp_certificates: certs.iter().filter_map(|c| STANDARD.decode(c).ok()).collect(),
        slo_url,
    }
}

const APP_COLUMNS: &str = "id, name, entity_id, acs_urls, name_id_format, attributes, sign_response, allowed_groups, require_signed, sp_certificates, slo_url";

fn app_row(r: &crate::db::Row<'_>) -> crate::db::Result<AppRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

pub fn app(conn: &crate::db::Connection, id: &str) -> Result<Option<App>> {
    let row = crate::db::OptionalExtension::optional(conn.query_row(
        &format!("SELECT {APP_COLUMNS} FROM saml_apps WHERE id = ?1"),
        crate::db::params![id],
        app_row,
    ))?;
    Ok(row.map(to_app))
}

pub fn apps(conn: &crate::db::Connection) -> Result<Vec<App>> {
    let mut stmt = conn.prepare(&format!("SELECT {APP_COLUMNS} FROM saml_apps ORDER BY id"))?;
    let rows: Vec<AppRow> = stmt.query_map(crate::db::params![], app_row)?.collect::<crate::db::Result<_>>()?;
    Ok(rows.into_iter().map(to_app).collect())
}

pub fn remove_app(conn: &crate::db::Connection, id: &str) -> Result<bool> {
    conn.execute("DELETE FROM saml_requests WHERE app_id = ?1", crate::db::params![id])?;
    Ok(conn.execute("DELETE FROM saml_apps WHERE id = ?1", crate::db::params![id])? > 0)
}

pub fn entity_id(issuer: &str, app: &str) -> String {
    format!("{issuer}/saml/{app}/metadata")
}

pub fn sso_url(issuer: &str, app: &str) -> String {
    format!("{issuer}/saml/{app}/sso")
}

pub fn slo_url(issuer: &str, app: &str) -> String {
    format!("{issuer}/saml/{app}/slo")
}

/// Certificates live as long as their key is published; ten years is the
/// validity they state (SPs pin the certificate, they do not chain it).
const CERT_YEARS: i64 = 10;

fn pem_body(der: &[u8]) -> String {
    STANDARD.encode(der)
}

/// The IdP metadata of `app`: every published RSA key's certificate (the
/// active one and those retired within the grace period, so an SP that
/// refreshes its metadata during a rollover keeps working), the NameID
/// format, the SSO endpoint for both bindings.
pub fn metadata(conn: &crate::db::Connection, issuer: &str, app: &App) -> Result<String> {
    if crate::oidc::keys::published_rsa(conn)?.is_empty() {
        crate::oidc::keys::active(conn, crate::oidc::keys::Alg::Rs256)?;
    }
    let mut keys = String::new();
    for (key, created) in crate::oidc::keys::published_rsa(conn)? {
        let cert = certificate(&key, &format!("idbridge {issuer}"), created, created + CERT_YEARS * 365 * 86400)?;
        let _ = write!(
            keys,
            "<md:KeyDescriptor use=\"signing\"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>",
            pem_body(&cert)
        );
    }
    let (sso, slo) = (escape(&sso_url(issuer, &app.id)), escape(&slo_url(issuer, &app.id)));
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<md:EntityDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\" xmlns:ds=\"{DSIG}\" entityID=\"{}\">\
         <md:IDPSSODescriptor WantAuthnRequestsSigned=\"{}\" protocolSupportEnumeration=\"urn:oasis:names:tc:SAML:2.0:protocol\">{keys}\
         <md:SingleLogoutService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect\" Location=\"{slo}\"/>\
         <md:NameIDFormat>{}</md:NameIDFormat>\
         <md:SingleSignOnService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect\" Location=\"{sso}\"/>\
         <md:SingleSignOnService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\" Location=\"{sso}\"/>\
         </md:IDPSSODescriptor></md:EntityDescriptor>",
        escape(&entity_id(issuer, &app.id)),
        app.require_signed,
        app.name_id_format.urn()
    ))
}

// ---- Sign-in ----

/// Why an AuthnRequest is refused. The texts are what the person sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsoRefusal {
    #[error("This request is not one the sign-in service can read ({0}).")]
    Malformed(String),
    #[error("This application is not registered here: it asked as {0:?}.")]
    UnknownServiceProvider(String),
    #[error("The application asked for the answer at an address that is not registered for it.")]
    AcsNotRegistered,
    #[error("The application asked not to show a sign-in page, and you are not signed in.")]
    NotSignedIn,
    #[error("This sign-in took too long. Go back to the application and start again.")]
    Expired,
    #[error("Your account may not use this application. Ask your administrator for access.")]
    NotAllowed,
    #[error("This request was used already. Go back to the application and start again.")]
    Replayed,
    #[error("The application asks for a kind of sign-in this service does not offer ({0}).")]
    UnsupportedContext(String),
    #[error(
        "The application asks for a sign-in with a second factor. Add a passkey or an authenticator app on Security info, then sign in again."
    )]
    SecondFactorRequired,
    #[error("This application's requests must be signed, and this one is not signed by it ({0}).")]
    Unsigned(String),
}

impl SsoRefusal {
    /// The audit's word.
    pub fn reason(&self) -> &'static str {
        match self {
            SsoRefusal::Malformed(_) => "malformed-request",
            SsoRefusal::UnknownServiceProvider(_) => "unknown-sp",
            SsoRefusal::AcsNotRegistered => "acs-not-registered",
            SsoRefusal::NotSignedIn => "passive-not-signed-in",
            SsoRefusal::Expired => "expired",
            SsoRefusal::NotAllowed => "not-allowed",
            SsoRefusal::Replayed => "replayed",
            SsoRefusal::UnsupportedContext(_) => "authn-context",
            SsoRefusal::SecondFactorRequired => "second-factor-required",
            SsoRefusal::Unsigned(_) => "unsigned-request",
        }
    }
}

/// An AuthnRequest, as much as the IdP uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthnRequest {
    pub id: String,
    pub issuer: String,
    pub acs_url: Option<String>,
    pub force_authn: bool,
    pub is_passive: bool,
    /// IssueInstant (Unix seconds).
    pub issued: i64,
    /// RequestedAuthnContext's class references.
    pub requested_classes: Vec<String>,
    /// The request's XML as received (an HTTP-POST request's signature is in it).
    pub xml: String,
}

/// How a request arrived, for its signature.
#[derive(Debug, Clone, Copy)]
pub enum Binding<'a> {
    /// HTTP-Redirect: the signature covers the query string's
    /// `SAMLRequest`, `RelayState` and `SigAlg`, as they were encoded.
    Redirect { raw_query: &'a str },
    /// HTTP-POST: an enveloped signature in the request.
    Post,
}

/// Checks the signature of a request (`xml` as received) when `required`:
/// made with one of `app`'s certificates.
pub fn check_signature(
    app: &App,
    xml: &str,
    binding: Binding<'_>,
    required: bool,
) -> std::result::Result<(), SsoRefusal> {
    if !required {
        return Ok(());
    }
    let unsigned = |why: &str| SsoRefusal::Unsigned(why.to_string());
    match binding {
        Binding::Post => {
            let root = xmldoc::parse(xml).map_err(|e| unsigned(&e.to_string()))?;
            match crate::federation::saml::verify_enveloped(&root, &app.sp_certificates) {
                Ok(true) => Ok(()),
                Ok(false) => Err(unsigned("no signature")),
                Err(e) => Err(unsigned(&e.detail())),
            }
        }
        Binding::Redirect { raw_query } => {
            let raw = |name: &str| {
                raw_query.split('&').find_map(|pair| pair.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
            };
            let (Some(request_value), Some(sig_alg), Some(signature)) =
                (raw("SAMLRequest"), raw("SigAlg"), raw("Signature"))
            else {
                return Err(unsigned("no Signature and SigAlg parameters"));
            };
            let mut signed = format!("SAMLRequest={request_value}");
            if let Some(relay) = raw("RelayState") {
                signed.push_str(&format!("&RelayState={relay}"));
            }
            signed.push_str(&format!("&SigAlg={sig_alg}"));
            let decode =
                |v: &str| percent_encoding::percent_decode_str(&v.replace('+', " ")).decode_utf8_lossy().to_string();
            let algorithm: &dyn rustls_pki_types::SignatureVerificationAlgorithm = match decode(sig_alg).as_str() {
                RSA_SHA256 => webpki::ring::RSA_PKCS1_2048_8192_SHA256,
                "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512" => webpki::ring::RSA_PKCS1_2048_8192_SHA512,
                other => {
                    return Err(unsigned(&format!("signature algorithm {other} is not accepted (RSA-SHA256/512)")));
                }
            };
            let value = STANDARD
                .decode(decode(signature).split_whitespace().collect::<String>())
                .map_err(|_| unsigned("the signature is not base64"))?;
            let verified = app.sp_certificates.iter().any(|cert| {
                let der = rustls_pki_types::CertificateDer::from(cert.as_slice());
                webpki::EndEntityCert::try_from(&der)
                    .is_ok_and(|c| c.verify_signature(algorithm, signed.as_bytes(), &value).is_ok())
            });
            if verified { Ok(()) } else { Err(unsigned("the signature was not made with the application's key")) }
        }
    }
}

/// Authentication context classes a password sign-in satisfies, and those
/// that need a second factor.
const PASSWORD_CLASSES: &[&str] = &[
    "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:Password",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:unspecified",
];
const MFA_CLASSES: &[&str] = &[
    "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorContract",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorUnregistered",
    "http://schemas.microsoft.com/claims/multipleauthn",
];
pub const MFA_CLASS: &str = "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorContract";

/// How far ahead of our clock an AuthnRequest's IssueInstant may be (the
/// SP's clock may run fast); it may be at most [`REQUEST_SECS`] old.
const CLOCK_SKEW_SECS: i64 = 300;

/// The largest AuthnRequest accepted, inflated (a real one is under 2 KiB).
const MAX_REQUEST_BYTES: usize = 64 << 10;

/// A `SAMLRequest` parameter's XML: base64, DEFLATE for the Redirect
/// binding (`deflated`), bounded in size before and after inflating.
fn decode_message(value: &str, deflated: bool) -> std::result::Result<String, SsoRefusal> {
    let bad = |m: &str| SsoRefusal::Malformed(m.to_string());
    let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.len() > MAX_REQUEST_BYTES * 2 {
        return Err(bad("too large"));
    }
    let raw = STANDARD.decode(compact.as_bytes()).map_err(|_| bad("not base64"))?;
    let xml_bytes = if deflated {
        miniz_oxide::inflate::decompress_to_vec_with_limit(&raw, MAX_REQUEST_BYTES)
            .map_err(|_| bad("not DEFLATE, or too large"))?
    } else {
        raw
    };
    String::from_utf8(xml_bytes).map_err(|_| bad("not UTF-8"))
}

/// A message's `IssueInstant` (Unix seconds).
fn issue_instant(root: &xmldoc::Element) -> Option<i64> {
    root.attr("IssueInstant")
        .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
        .map(time::OffsetDateTime::unix_timestamp)
}

/// What every request an SP sends has: its XML as received, the parsed
/// root, ID, Issuer and IssueInstant (Unix seconds).
struct RequestHead {
    text: String,
    root: xmldoc::Element,
    id: String,
    issuer: String,
    issued: i64,
}

/// Reads the `SAMLRequest` parameter: base64, DEFLATE for the Redirect
/// binding (`deflated`), then the XML (bounded like every SAML message),
/// whose root must be the protocol element `element` (`article`: how the
/// refusal names it).
fn read_request(
    value: &str,
    deflated: bool,
    element: &str,
    article: &str,
) -> std::result::Result<RequestHead, SsoRefusal> {
    let bad = |m: &str| SsoRefusal::Malformed(m.to_string());
    let text = decode_message(value, deflated)?;
    let root = xmldoc::parse(&text).map_err(|e| SsoRefusal::Malformed(e.to_string()))?;
    if !root.is(PROTOCOL_NS, element) {
        return Err(SsoRefusal::Malformed(format!("not {article} {element}")));
    }
    let id = root.attr("ID").filter(|i| !i.is_empty() && i.len() <= 256).ok_or_else(|| bad("no ID"))?.to_string();
    let issuer =
        root.child(ASSERTION_NS, "Issuer").map(|i| i.text().trim().to_string()).ok_or_else(|| bad("no Issuer"))?;
    let issued = issue_instant(&root).ok_or_else(|| bad("no IssueInstant"))?;
    Ok(RequestHead { text, root, id, issuer, issued })
}

/// Reads an AuthnRequest from the `SAMLRequest` parameter.
pub fn parse_request(value: &str, deflated: bool) -> std::result::Result<AuthnRequest, SsoRefusal> {
    let RequestHead { text, root, id, issuer, issued } = read_request(value, deflated, "AuthnRequest", "an")?;
    let flag = |name: &str| root.attr(name).is_some_and(|v| v == "true" || v == "1");
    let requested_classes = root
        .child(PROTOCOL_NS, "RequestedAuthnContext")
        .map(|c| {
            c.elements()
                .filter(|e| e.is(ASSERTION_NS, "AuthnContextClassRef"))
                .map(|e| e.text().trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    Ok(AuthnRequest {
        id,
        issuer,
        acs_url: root.attr("AssertionConsumerServiceURL").map(str::to_string),
        force_authn: flag("ForceAuthn"),
        is_passive: flag("IsPassive"),
        issued,
        requested_classes,
        xml: text,
    })
}

/// How long a sign-in may wait for the person.
pub const REQUEST_SECS: i64 = 600;

/// A sign-in waiting for the person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub app_id: String,
    /// The AuthnRequest's ID; none when the sign-in started here (IdP-initiated).
    pub request_id: Option<String>,
    pub acs_url: String,
    pub relay_state: Option<String>,
    pub force_authn: bool,
    /// The application asked for a second factor (RequestedAuthnContext).
    pub need_mfa: bool,
}

/// Checks `request` against the application `app_id` names and keeps it
/// while the person signs in; the token the continuation carries.
pub fn begin(
    conn: &crate::db::Connection,
    app_id: &str,
    request: &AuthnRequest,
    binding: Binding<'_>,
    relay_state: Option<&str>,
) -> Result<std::result::Result<(String, Pending), SsoRefusal>> {
    let Some(app) = app(conn, app_id)?.filter(|a| a.entity_id == request.issuer) else {
        return Ok(Err(SsoRefusal::UnknownServiceProvider(request.issuer.clone())));
    };
    if let Err(refusal) = check_signature(&app, &request.xml, binding, app.require_signed) {
        return Ok(Err(refusal));
    }
    let acs_url = match &request.acs_url {
        Some(url) if app.acs_urls.iter().any(|u| u == url) => url.clone(),
        Some(_) => return Ok(Err(SsoRefusal::AcsNotRegistered)),
        None => match app.acs_urls.first() {
            Some(first) => first.clone(),
            None => return Ok(Err(SsoRefusal::AcsNotRegistered)),
        },
    };
    let now = crate::util::now_secs();
    if request.issued < now - REQUEST_SECS || request.issued > now + CLOCK_SKEW_SECS {
        return Ok(Err(SsoRefusal::Expired));
    }
    let mut need_mfa = false;
    if !request.requested_classes.is_empty() {
        let known = |c: &String| PASSWORD_CLASSES.contains(&c.as_str()) || MFA_CLASSES.contains(&c.as_str());
        // Exact comparison (the default): one class we can satisfy is enough.
        if !request.requested_classes.iter().any(known) {
            return Ok(Err(SsoRefusal::UnsupportedContext(request.requested_classes.join(", "))));
        }
        need_mfa = !request.requested_classes.iter().any(|c| PASSWORD_CLASSES.contains(&c.as_str()));
    }
    if !first_use(conn, &app.id, &request.id, now)? {
        return Ok(Err(SsoRefusal::Replayed));
    }
    let relay_state = relay_state.filter(|r| r.len() <= 1024).map(str::to_string);
    let pending = Pending {
        app_id: app.id,
        request_id: Some(request.id.clone()),
        acs_url,
        relay_state,
        force_authn: request.force_authn,
        need_mfa,
    };
    let token = crate::util::random_token();
    conn.execute("DELETE FROM saml_requests WHERE expires <= ?1", crate::db::params![now])?;
    conn.execute(
        "INSERT INTO saml_requests(hash, app_id, request_id, acs_url, relay_state, force_authn, need_mfa, expires) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        crate::db::params![
            crate::util::sha256(token.as_bytes()),
            pending.app_id,
            pending.request_id,
            pending.acs_url,
            pending.relay_state,
            pending.force_authn,
            pending.need_mfa,
            now + REQUEST_SECS
        ],
    )?;
    Ok(Ok((token, pending)))
}

/// Notes a request ID of `app_id`; false when it was seen already. Each ID
/// counts once per application for as long as a request may be used.
fn first_use(conn: &crate::db::Connection, app_id: &str, request_id: &str, now: i64) -> Result<bool> {
    conn.execute("DELETE FROM saml_seen WHERE expires <= ?1", crate::db::params![now])?;
    let seen: Option<i64> = crate::db::OptionalExtension::optional(conn.query_row(
        "SELECT expires FROM saml_seen WHERE app_id = ?1 AND request_id = ?2",
        crate::db::params![app_id, request_id],
        |r| r.get(0),
    ))?;
    if seen.is_some() {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO saml_seen(app_id, request_id, expires) VALUES(?1, ?2, ?3)",
        crate::db::params![app_id, request_id, now + REQUEST_SECS + CLOCK_SKEW_SECS],
    )?;
    Ok(true)
}

/// The application a waiting sign-in is for (read, not used up): the sign-in
/// log names it.
pub fn pending_app(conn: &crate::db::Connection, token: &str) -> Result<Option<String>> {
    Ok(crate::db::OptionalExtension::optional(conn.query_row(
        "SELECT app_id FROM saml_requests WHERE hash = ?1 AND expires > ?2",
        crate::db::params![crate::util::sha256(token.as_bytes()), crate::util::now_secs()],
        |r| r.get(0),
    ))?)
}

/// A sign-in started here (IdP-initiated: from a link to
/// `/saml/{app}/start`): the app's first ACS URL, no request ID.
pub fn begin_unsolicited(conn: &crate::db::Connection, app_id: &str) -> Result<Option<(String, Pending)>> {
    let Some(app) = app(conn, app_id)? else { return Ok(None) };
    let Some(acs_url) = app.acs_urls.first().cloned() else { return Ok(None) };
    let pending =
        Pending { app_id: app.id, request_id: None, acs_url, relay_state: None, force_authn: false, need_mfa: false };
    let token = crate::util::random_token();
    conn.execute(
        "INSERT INTO saml_requests(hash, app_id, request_id, acs_url, relay_state, force_authn, need_mfa, expires) VALUES(?1, ?2, NULL, ?3, NULL, ?4, 0, ?5)",
        crate::db::params![
            crate::util::sha256(token.as_bytes()),
            pending.app_id,
            pending.acs_url,
            false,
            crate::util::now_secs() + REQUEST_SECS
        ],
    )?;
    Ok(Some((token, pending)))
}

/// The sign-in `token` stands for, used up (single use).
pub fn take(conn: &crate::db::Connection, token: &str) -> Result<Option<Pending>> {
    let hash = crate::util::sha256(token.as_bytes());
    let row = crate::db::OptionalExtension::optional(conn.query_row(
        "SELECT app_id, request_id, acs_url, relay_state, force_authn, need_mfa FROM saml_requests WHERE hash = ?1 AND expires > ?2",
        crate::db::params![hash, crate::util::now_secs()],
        |r| {
            Ok(Pending {
                app_id: r.get(0)?,
                request_id: r.get(1)?,
                acs_url: r.get(2)?,
                relay_state: r.get(3)?,
                force_authn: r.get(4)?,
                need_mfa: r.get(5)?,
            })
        },
    ))?;
    conn.execute("DELETE FROM saml_requests WHERE hash = ?1", crate::db::params![hash])?;
    Ok(row)
}

/// The persistent NameID of `user_id` for `app_id`: an HMAC under a key of
/// this tenant, so it is stable, says nothing of the user name, and two
/// applications cannot match their users by it.
fn persistent_name_id(conn: &crate::db::Connection, app_id: &str, user_id: &str) -> Result<String> {
    tenant_mac(conn, &format!("{app_id}\n{user_id}"))
}

/// The SessionIndex of the browser session `session` (its hash) at
/// `app_id`: the same for every assertion of that session, so a
/// LogoutRequest can name it, and not guessable without the tenant's key.
fn session_index(conn: &crate::db::Connection, app_id: &str, session: &[u8]) -> Result<String> {
    let hex: String = session.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("_{}", tenant_mac(conn, &format!("session\n{app_id}\n{hex}"))?))
}

/// HMAC-SHA-256 of `message` under this tenant's SAML key (made on first
/// use), 20 bytes in hex.
fn tenant_mac(conn: &crate::db::Connection, message: &str) -> Result<String> {
    let key = match crate::store::get_meta(conn, "saml_name_id_key")? {
        Some(k) => k,
        None => {
            let k = crate::util::random_token();
            crate::store::set_meta(conn, "saml_name_id_key", &k)?;
            k
        }
    };
    let mac = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes()), message.as_bytes());
    Ok(mac.as_ref().iter().take(20).map(|b| format!("{b:02x}")).collect())
}

/// The NameID `app` knows `user` by.
fn name_id_for(conn: &crate::db::Connection, app: &App, user: &crate::objects::Stored) -> Result<String> {
    Ok(match app.name_id_format {
        NameIdFormat::Persistent => persistent_name_id(conn, &app.id, &user.id)?,
        NameIdFormat::Email | NameIdFormat::Unspecified => {
            user.data.get("userName").and_then(serde_json::Value::as_str).unwrap_or_default().to_string()
        }
    })
}

/// The groups of `user_id`, nested ones included: (ids, display names).
fn groups_of(conn: &crate::db::Connection, user_id: &str) -> Result<(Vec<String>, Vec<String>)> {
    let ids = crate::console::groups_of(conn, user_id)?;
    let mut names = Vec::new();
    for id in &ids {
        if let Some(g) = crate::objects::load(conn, Some(crate::objects::Kind::Group), id)? {
            names.push(g.data.get("displayName").and_then(serde_json::Value::as_str).unwrap_or(id).to_string());
        }
    }
    Ok((ids, names))
}

/// May a member of these groups use `app`?
fn may_use(app: &App, (ids, names): &(Vec<String>, Vec<String>)) -> bool {
    app.allowed_groups.is_empty()
        || app
            .allowed_groups
            .iter()
            .any(|wanted| ids.contains(wanted) || names.iter().any(|n| n.eq_ignore_ascii_case(wanted)))
}

/// The applications `user` may use ("My Apps").
pub fn apps_for(conn: &crate::db::Connection, user: &crate::objects::Stored) -> Result<Vec<App>> {
    let groups = groups_of(conn, &user.id)?;
    Ok(apps(conn)?.into_iter().filter(|a| may_use(a, &groups)).collect())
}

/// Who signed in, as the Response tells it: the user, when and how, and
/// the browser session (its hash) that SessionIndex and Single Logout name.
#[derive(Debug, Clone, Copy)]
pub struct SignedIn<'a> {
    pub user: &'a crate::objects::Stored,
    pub authn_instant: i64,
    pub mfa: bool,
    pub session: &'a [u8],
}

/// The signed Response for the signed-in person, posted to the pending
/// sign-in's ACS URL.
pub fn respond(
    conn: &crate::db::Connection,
    issuer: &str,
    pending: &Pending,
    who: SignedIn<'_>,
) -> Result<std::result::Result<String, SsoRefusal>> {
    let SignedIn { user, authn_instant, mfa, session } = who;
    let app =
        app(conn, &pending.app_id)?.ok_or_else(|| TenantError::NotFound(format!("application {}", pending.app_id)))?;
    let groups = groups_of(conn, &user.id)?;
    if !may_use(&app, &groups) {
        return Ok(Err(SsoRefusal::NotAllowed));
    }
    if pending.need_mfa && !mfa {
        return Ok(Err(SsoRefusal::SecondFactorRequired));
    }
    let (group_ids, group_names) = groups;
    let name_id = name_id_for(conn, &app, user)?;
    let configured = if app.attributes.is_empty() { default_attributes() } else { app.attributes.clone() };
    let mut attributes = Vec::new();
    for (name, source) in configured {
        let value = match source.as_str() {
            "groups" => group_names.clone(),
            "groupIds" => group_ids.clone(),
            _ => sync_path(&user.data, &source),
        };
        if !value.is_empty() {
            attributes.push((name, value));
        }
    }
    let key = crate::oidc::keys::active(conn, crate::oidc::keys::Alg::Rs256)?;
    let created = crate::oidc::keys::published_rsa(conn)?
        .into_iter()
        .find(|(k, _)| k.kid == key.kid)
        .map_or_else(crate::util::now_secs, |(_, c)| c);
    let cert = certificate(&key, &format!("idbridge {issuer}"), created, created + CERT_YEARS * 365 * 86400)?;
    let now = crate::util::now_secs();
    let params = ResponseParams {
        issuer: entity_id(issuer, &app.id),
        audience: app.entity_id.clone(),
        destination: pending.acs_url.clone(),
        in_response_to: pending.request_id.clone(),
        name_id,
        name_id_format: app.name_id_format.urn().to_string(),
        session_index: session_index(conn, &app.id, session)?,
        issued_at: now,
        authn_instant,
        lifetime_secs: 300,
        authn_context_class: if mfa {
            MFA_CLASS.into()
        } else {
            "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport".into()
        },
        attributes,
    };
    let (_, _, xml) = response(&params, &key, &cert, app.sign_response)?;
    Ok(Ok(xml))
}

// ---- Single Logout ----

/// A LogoutRequest, as much as the IdP uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    pub id: String,
    pub issuer: String,
    /// IssueInstant (Unix seconds).
    pub issued: i64,
    /// NotOnOrAfter (Unix seconds), if the SP set one.
    pub not_on_or_after: Option<i64>,
    pub name_id: String,
    /// The sessions to end; none means every session of the NameID.
    pub session_indexes: Vec<String>,
    /// The request's XML as received.
    pub xml: String,
}

/// How many SessionIndex elements are read (a real request has one).
const MAX_SESSION_INDEXES: usize = 16;

/// Reads a LogoutRequest from the `SAMLRequest` parameter (bounded like an
/// AuthnRequest).
pub fn parse_logout_request(value: &str, deflated: bool) -> std::result::Result<LogoutRequest, SsoRefusal> {
    let bad = |m: &str| SsoRefusal::Malformed(m.to_string());
    let RequestHead { text, root, id, issuer, issued } = read_request(value, deflated, "LogoutRequest", "a")?;
    let not_on_or_after = match root.attr("NotOnOrAfter") {
        Some(t) => Some(
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|_| bad("NotOnOrAfter is not a time"))?
                .unix_timestamp(),
        ),
        None => None,
    };
    let name_id =
        root.child(ASSERTION_NS, "NameID").map(|n| n.text().trim().to_string()).ok_or_else(|| bad("no NameID"))?;
    let session_indexes = root
        .elements()
        .filter(|e| e.is(PROTOCOL_NS, "SessionIndex"))
        .take(MAX_SESSION_INDEXES)
        .map(|e| e.text().trim().to_string())
        .collect();
    Ok(LogoutRequest { id, issuer, issued, not_on_or_after, name_id, session_indexes, xml: text })
}

/// What a LogoutResponse says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutStatus {
    /// Signed out (or not signed in to begin with).
    Success,
    /// The NameID is not the person signed in here: nothing ended.
    UnknownPrincipal,
    /// An unsigned request that does not name this browser's session:
    /// nothing ended (anyone can make an unsigned request).
    RequestDenied,
}

impl LogoutStatus {
    fn xml(self) -> String {
        let code = |v: &str| format!("urn:oasis:names:tc:SAML:2.0:status:{v}");
        match self {
            LogoutStatus::Success => format!("<samlp:StatusCode Value=\"{}\"/>", code("Success")),
            LogoutStatus::UnknownPrincipal | LogoutStatus::RequestDenied => format!(
                "<samlp:StatusCode Value=\"{}\"><samlp:StatusCode Value=\"{}\"/></samlp:StatusCode>",
                code("Requester"),
                code(if self == LogoutStatus::UnknownPrincipal { "UnknownPrincipal" } else { "RequestDenied" })
            ),
        }
    }

    /// The audit's word.
    pub fn word(self) -> &'static str {
        match self {
            LogoutStatus::Success => "success",
            LogoutStatus::UnknownPrincipal => "unknown-principal",
            LogoutStatus::RequestDenied => "request-denied",
        }
    }
}

/// A Single Logout's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutAnswer {
    pub status: LogoutStatus,
    /// The browser's session was ended.
    pub ended: bool,
    /// The person signed out (for the audit).
    pub user: Option<(String, String)>,
    /// The signed LogoutResponse as an HTTP-Redirect URL to the
    /// application's logout URL; `None` when it has none.
    pub redirect: Option<String>,
}

/// An SP-initiated Single Logout (HTTP-Redirect binding, `raw_query` as
/// received): checks the request, ends the browser's session (`session`:
/// its user and hash) when the request names it, and answers.
///
/// A request signed with one of the application's certificates — required
/// when it has any — ends the session of the NameID it names. An unsigned
/// one (an application without certificates) must also carry this
/// session's SessionIndex, which only the application was told: otherwise
/// any page could sign people out.
pub fn logout(
    conn: &crate::db::Connection,
    issuer: &str,
    app_id: &str,
    request: &LogoutRequest,
    raw_query: &str,
    session: Option<(&crate::objects::Stored, &[u8])>,
    relay_state: Option<&str>,
) -> Result<std::result::Result<LogoutAnswer, SsoRefusal>> {
    let Some(app) = app(conn, app_id)?.filter(|a| a.entity_id == request.issuer) else {
        return Ok(Err(SsoRefusal::UnknownServiceProvider(request.issuer.clone())));
    };
    let signed = !app.sp_certificates.is_empty();
    if let Err(refusal) = check_signature(&app, &request.xml, Binding::Redirect { raw_query }, signed) {
        return Ok(Err(refusal));
    }
    let now = crate::util::now_secs();
    let stale = request.not_on_or_after.is_some_and(|t| t + CLOCK_SKEW_SECS <= now);
    if stale || request.issued < now - REQUEST_SECS || request.issued > now + CLOCK_SKEW_SECS {
        return Ok(Err(SsoRefusal::Expired));
    }
    if !first_use(conn, &app.id, &request.id, now)? {
        return Ok(Err(SsoRefusal::Replayed));
    }
    let mut answer = LogoutAnswer { status: LogoutStatus::Success, ended: false, user: None, redirect: None };
    if let Some((user, hash)) = session {
        let ours = session_index(conn, &app.id, hash)?;
        let names_this_session = request.session_indexes.contains(&ours);
        if name_id_for(conn, &app, user)? != request.name_id {
            answer.status = LogoutStatus::UnknownPrincipal;
        } else if !signed && !names_this_session {
            answer.status = LogoutStatus::RequestDenied;
        } else if request.session_indexes.is_empty() || names_this_session {
            conn.execute("DELETE FROM sessions WHERE hash = ?1", crate::db::params![hash])?;
            answer.ended = true;
        }
        let name = user.data.get("userName").and_then(serde_json::Value::as_str).unwrap_or_default();
        answer.user = Some((user.id.clone(), name.to_string()));
    }
    if let Some(url) = &app.slo_url {
        answer.redirect = Some(logout_response_url(conn, issuer, &app, url, &request.id, answer.status, relay_state)?);
    }
    Ok(Ok(answer))
}

/// A signed LogoutResponse for the HTTP-Redirect binding: DEFLATE, base64,
/// and the signature over `SAMLResponse`, `RelayState` and `SigAlg` as
/// encoded in the URL (SAML bindings §3.4.4.1).
fn logout_response_url(
    conn: &crate::db::Connection,
    issuer: &str,
    app: &App,
    destination: &str,
    in_response_to: &str,
    status: LogoutStatus,
    relay_state: Option<&str>,
) -> Result<String> {
    let xml = format!(
        "<samlp:LogoutResponse xmlns:samlp=\"{PROTOCOL_NS}\" xmlns:saml=\"{ASSERTION_NS}\" ID=\"{}\" Version=\"2.0\" \
         IssueInstant=\"{}\" Destination=\"{}\" InResponseTo=\"{}\"><saml:Issuer>{}</saml:Issuer>\
         <samlp:Status>{}</samlp:Status></samlp:LogoutResponse>",
        new_id(),
        instant(crate::util::now_secs())?,
        escape(destination),
        escape(in_response_to),
        escape(&entity_id(issuer, &app.id)),
        status.xml()
    );
    let deflated = miniz_oxide::deflate::compress_to_vec(xml.as_bytes(), 6);
    let mut signed = format!("SAMLResponse={}", crate::util::urlencode(&STANDARD.encode(deflated)));
    if let Some(relay) = relay_state.filter(|r| r.len() <= 1024) {
        let _ = write!(signed, "&RelayState={}", crate::util::urlencode(relay));
    }
    let _ = write!(signed, "&SigAlg={}", crate::util::urlencode(RSA_SHA256));
    let key = crate::oidc::keys::active(conn, crate::oidc::keys::Alg::Rs256)?;
    let signature = STANDARD.encode(key.sign(signed.as_bytes())?);
    let separator = if destination.contains('?') { '&' } else { '?' };
    Ok(format!("{destination}{separator}{signed}&Signature={}", crate::util::urlencode(&signature)))
}

// ---- Service provider metadata ----

/// What an SP's metadata says about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpMetadata {
    pub entity_id: String,
    /// HTTP-POST Assertion Consumer Services, the default one first.
    pub acs_urls: Vec<String>,
    /// Its HTTP-Redirect Single Logout service (ResponseLocation if given).
    pub slo_url: Option<String>,
    /// Its signing certificates (DER).
    pub certificates: Vec<Vec<u8>>,
    /// `AuthnRequestsSigned="true"`.
    pub authn_requests_signed: bool,
    /// The first NameIDFormat it lists, if it is one of ours.
    pub name_id_format: Option<NameIdFormat>,
}

const METADATA_NS: &str = "urn:oasis:names:tc:SAML:2.0:metadata";
const POST_BINDING: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";
const REDIRECT_BINDING: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";

/// Reads a service provider's metadata (one EntityDescriptor with an
/// SPSSODescriptor; bounded like every SAML document).
pub fn parse_sp_metadata(xml: &str) -> Result<SpMetadata> {
    let bad = |m: String| TenantError::Invalid(format!("SP metadata: {m}"));
    let root = xmldoc::parse(xml).map_err(|e| bad(e.to_string()))?;
    let entity = if root.is(METADATA_NS, "EntityDescriptor") {
        &root
    } else if root.is(METADATA_NS, "EntitiesDescriptor") {
        let mut found = root.elements().filter(|e| e.is(METADATA_NS, "EntityDescriptor"));
        match (found.next(), found.next()) {
            (Some(one), None) => one,
            _ => return Err(bad("give the metadata of one service provider (one EntityDescriptor)".into())),
        }
    } else {
        return Err(bad("not SAML metadata (no EntityDescriptor)".into()));
    };
    let entity_id =
        entity.attr("entityID").filter(|e| !e.trim().is_empty()).ok_or_else(|| bad("no entityID".into()))?;
    let sp = entity
        .child(METADATA_NS, "SPSSODescriptor")
        .ok_or_else(|| bad(format!("{entity_id} is not a service provider (no SPSSODescriptor)")))?;
    let mut acs: Vec<(bool, u64, String)> = sp
        .elements()
        .filter(|e| e.is(METADATA_NS, "AssertionConsumerService") && e.attr("Binding") == Some(POST_BINDING))
        .filter_map(|e| {
            let default = e.attr("isDefault").is_some_and(|d| d == "true" || d == "1");
            let index = e.attr("index").and_then(|i| i.parse().ok()).unwrap_or(u64::MAX);
            Some((!default, index, e.attr("Location")?.to_string()))
        })
        .collect();
    acs.sort();
    if acs.is_empty() {
        return Err(bad(format!("{entity_id} has no HTTP-POST AssertionConsumerService")));
    }
    let slo_url = sp
        .elements()
        .find(|e| e.is(METADATA_NS, "SingleLogoutService") && e.attr("Binding") == Some(REDIRECT_BINDING))
        .and_then(|e| e.attr("ResponseLocation").or_else(|| e.attr("Location")))
        .map(str::to_string);
    let mut certificates = Vec::new();
    for descriptor in sp.elements().filter(|e| e.is(METADATA_NS, "KeyDescriptor")) {
        if descriptor.attr("use").is_some_and(|u| u != "signing") {
            continue;
        }
        for cert in descriptor.descendants().into_iter().filter(|e| e.is(DSIG, "X509Certificate")) {
            let der = STANDARD
                .decode(cert.text().split_whitespace().collect::<String>())
                .map_err(|_| bad("an X509Certificate is not base64".into()))?;
            certificates.push(der);
        }
    }
    let name_id_format =
        sp.elements().filter(|e| e.is(METADATA_NS, "NameIDFormat")).find_map(|e| match e.text().trim() {
            "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent" => Some(NameIdFormat::Persistent),
            "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress" => Some(NameIdFormat::Email),
            "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified" => Some(NameIdFormat::Unspecified),
            _ => None,
        });
    Ok(SpMetadata {
        entity_id: entity_id.trim().to_string(),
        acs_urls: acs.into_iter().map(|(_, _, url)| url).collect(),
        slo_url,
        certificates,
        authn_requests_signed: sp.attr("AuthnRequestsSigned").is_some_and(|v| v == "true" || v == "1"),
        name_id_format,
    })
}

/// A user attribute by a SCIM-like path: `userName`, `name.givenName`,
/// `emails` (their values), `hybrid:immutableId`, `enterprise:department`.
fn sync_path(data: &serde_json::Value, path: &str) -> Vec<String> {
    const HYBRID: &str = "urn:idbridge:params:scim:schemas:extension:hybrid:2.0:Object";
    const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    let (container, rest) = if let Some(r) = path.strip_prefix("hybrid:") {
        (data.get(HYBRID), r)
    } else if let Some(r) = path.strip_prefix("enterprise:") {
        (data.get(ENTERPRISE), r)
    } else {
        (Some(data), path)
    };
    let mut value = container;
    for part in rest.split('.') {
        value = value.and_then(|v| v.get(part));
    }
    match value {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Bool(b)) => vec![b.to_string()],
        Some(serde_json::Value::Number(n)) => vec![n.to_string()],
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|i| {
                i.as_str().map(str::to_string).or_else(|| i.get("value").and_then(|v| v.as_str()).map(str::to_string))
            })
            .collect(),
        _ => Vec::new(),
    }
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

    #[test]
    fn authn_requests_are_read_within_bounds() {
        let xml = format!(
            "<samlp:AuthnRequest xmlns:samlp=\"{PROTOCOL_NS}\" xmlns:saml=\"{ASSERTION_NS}\" ID=\"_r1\" IssueInstant=\"2026-12-05T10:00:00.5Z\" ForceAuthn=\"true\" \
             AssertionConsumerServiceURL=\"https://sp.example/acs\"><saml:Issuer>https://sp.example</saml:Issuer></samlp:AuthnRequest>"
        );
        let deflated = STANDARD.encode(miniz_oxide::deflate::compress_to_vec(xml.as_bytes(), 6));
        let r = parse_request(&deflated, true).unwrap();
        assert_eq!(
            (r.id.as_str(), r.issuer.as_str(), r.force_authn, r.is_passive),
            ("_r1", "https://sp.example", true, false)
        );
        assert_eq!(r.issued, 1_796_464_800, "IssueInstant");
        assert_eq!(parse_request(&STANDARD.encode(&xml), false).unwrap(), r);
        // A DEFLATE bomb (megabytes of one byte) stops at the limit.
        let bomb = STANDARD.encode(miniz_oxide::deflate::compress_to_vec(&vec![b'a'; 4 << 20], 9));
        assert!(matches!(parse_request(&bomb, true), Err(SsoRefusal::Malformed(_))));
        for bad in ["", "!!!", &STANDARD.encode("<x/>"), &STANDARD.encode("<!DOCTYPE a [<!ENTITY b \"c\">]><a/>")] {
            assert!(matches!(parse_request(bad, false), Err(SsoRefusal::Malformed(_))), "{bad}");
        }
        let no_id = xml.replace(" ID=\"_r1\"", "");
        assert!(
            matches!(parse_request(&STANDARD.encode(no_id), false), Err(SsoRefusal::Malformed(m)) if m.contains("ID"))
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn hostile_requests_never_panic(text in "\\PC{0,400}", deflated in proptest::bool::ANY) {
            let _ = parse_request(&text, deflated);
            let _ = parse_request(&STANDARD.encode(text.as_bytes()), false);
            let _ = parse_logout_request(&text, deflated);
            let _ = parse_logout_request(&STANDARD.encode(text.as_bytes()), false);
            let _ = parse_sp_metadata(&text);
        }
    }

    fn logout_xml(id: &str, issuer: &str, name_id: &str, index: Option<&str>, age: i64) -> String {
        let issued = crate::util::rfc3339(crate::util::now_secs() - age, 0);
        let index = index
            .map(|i| format!("<saml2p:SessionIndex xmlns:saml2p=\"{PROTOCOL_NS}\">{i}</saml2p:SessionIndex>"))
            .unwrap_or_default();
        format!(
            "<samlp:LogoutRequest xmlns:samlp=\"{PROTOCOL_NS}\" xmlns:saml=\"{ASSERTION_NS}\" ID=\"{id}\" Version=\"2.0\" IssueInstant=\"{issued}\">\
             <saml:Issuer>{issuer}</saml:Issuer><saml:NameID Format=\"urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress\">{name_id}</saml:NameID>{index}</samlp:LogoutRequest>"
        )
    }

    #[test]
    fn logout_requests_are_read_within_bounds() {
        let xml = logout_xml("_l1", "https://sp.example/ü", "zoë@example.com", Some("_s1"), 0);
        let deflated = STANDARD.encode(miniz_oxide::deflate::compress_to_vec(xml.as_bytes(), 6));
        let r = parse_logout_request(&deflated, true).unwrap();
        assert_eq!(
            (r.id.as_str(), r.issuer.as_str(), r.name_id.as_str(), r.session_indexes.clone()),
            ("_l1", "https://sp.example/ü", "zoë@example.com", vec!["_s1".to_string()])
        );
        assert!(r.not_on_or_after.is_none());
        let no_name = xml.replace("<saml:NameID", "<saml:Other").replace("</saml:NameID>", "</saml:Other>");
        assert!(
            matches!(parse_logout_request(&STANDARD.encode(no_name), false), Err(SsoRefusal::Malformed(m)) if m.contains("NameID"))
        );
        // An AuthnRequest is not a LogoutRequest, and the other way round.
        assert!(parse_request(&STANDARD.encode(&xml), false).is_err());
        let many: String = (0..100).map(|i| format!("<samlp:SessionIndex>_{i}</samlp:SessionIndex>")).collect();
        let crowded = xml.replace("</samlp:LogoutRequest>", &format!("{many}</samlp:LogoutRequest>"));
        let read = parse_logout_request(&STANDARD.encode(crowded), false).unwrap();
        assert_eq!(read.session_indexes.len(), MAX_SESSION_INDEXES, "bounded");
        let bomb = STANDARD.encode(miniz_oxide::deflate::compress_to_vec(&vec![b'<'; 4 << 20], 9));
        assert!(matches!(parse_logout_request(&bomb, true), Err(SsoRefusal::Malformed(_))));
    }

    /// What a Single Logout ends: only the session the request names, and
    /// only when the request could not have been made by any page — signed,
    /// or carrying the session's SessionIndex. The LogoutResponse is signed
    /// with the tenant's key over the encoded parameters.
    #[test]
    fn single_logout_ends_only_the_session_it_names() {
        let dir = std::env::temp_dir().join(format!("idbridge-saml-slo-{}", crate::util::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = crate::Store::open(&dir.join("tenant.db")).unwrap();
        let conn = store.lock();
        let issuer = "https://login.example.com";
        let mut app = App {
            name_id_format: NameIdFormat::Email,
            slo_url: Some("https://crm.example.net/slo?tenant=1".into()),
            ..test_app()
        };
        add_app(&conn, &app).unwrap();
        let user = crate::objects::Stored {
            id: "u-1".into(),
            kind: crate::objects::Kind::User,
            data: serde_json::json!({"userName": "zoë@example.com"}),
            version: 1,
            created: String::new(),
            modified: String::new(),
        };
        let hash = crate::util::sha256(b"session-token");
        let session_alive = |conn: &crate::db::Connection| -> bool {
            crate::db::OptionalExtension::optional(conn.query_row(
                "SELECT 1 FROM sessions WHERE hash = ?1",
                crate::db::params![hash],
                |r| r.get::<_, i64>(0),
            ))
            .unwrap()
            .is_some()
        };
        conn.execute(
            "INSERT INTO sessions(hash, user_id, created, expires) VALUES(?1, 'u-1', ?2, ?3)",
            crate::db::params![hash, crate::util::now_secs(), crate::util::now_secs() + 3600],
        )
        .unwrap();
        let ours = session_index(&conn, "crm", &hash).unwrap();
        assert_eq!(ours, session_index(&conn, "crm", &hash).unwrap(), "one index per session and application");
        assert_ne!(ours, session_index(&conn, "hr", &hash).unwrap());
        let run = |conn: &crate::db::Connection, xml: &str, signed_in: bool| {
            let request = parse_logout_request(&STANDARD.encode(xml), false).unwrap();
            let session = signed_in.then_some((&user, hash.as_slice()));
            logout(conn, issuer, "crm", &request, "", session, Some("/bye")).unwrap()
        };
        // Unsigned, without the session's index: anyone could have sent it.
        let denied = run(&conn, &logout_xml("_l1", &app.entity_id, "zoë@example.com", None, 0), true).unwrap();
        assert_eq!((denied.status, denied.ended), (LogoutStatus::RequestDenied, false));
        assert!(session_alive(&conn));
        // Someone else's NameID.
        let other = run(&conn, &logout_xml("_l2", &app.entity_id, "bob@example.com", Some(&ours), 0), true).unwrap();
        assert_eq!((other.status, other.ended), (LogoutStatus::UnknownPrincipal, false));
        assert!(session_alive(&conn));
        // Replayed, too old, another application's entity id.
        assert_eq!(
            run(&conn, &logout_xml("_l2", &app.entity_id, "zoë@example.com", Some(&ours), 0), true),
            Err(SsoRefusal::Replayed)
        );
        assert_eq!(
            run(&conn, &logout_xml("_l3", &app.entity_id, "zoë@example.com", Some(&ours), 3600), true),
            Err(SsoRefusal::Expired)
        );
        assert!(matches!(
            run(&conn, &logout_xml("_l4", "https://evil.example", "zoë@example.com", Some(&ours), 0), true),
            Err(SsoRefusal::UnknownServiceProvider(_))
        ));
        assert!(session_alive(&conn));
        // The session's own index: signed out, and the answer is signed.
        let done = run(&conn, &logout_xml("_l5", &app.entity_id, "zoë@example.com", Some(&ours), 0), true).unwrap();
        assert_eq!((done.status, done.ended), (LogoutStatus::Success, true));
        assert!(!session_alive(&conn));
        let url = done.redirect.unwrap();
        let query = url.strip_prefix("https://crm.example.net/slo?tenant=1&").unwrap();
        let (signed, signature) = query.split_once("&Signature=").unwrap();
        assert!(signed.starts_with("SAMLResponse=") && signed.contains("&RelayState=%2Fbye&SigAlg="), "{signed}");
        let signature =
            STANDARD.decode(percent_encoding::percent_decode_str(signature).decode_utf8().unwrap().as_bytes()).unwrap();
        let kid = crate::oidc::keys::active(&conn, crate::oidc::keys::Alg::Rs256).unwrap().kid;
        assert!(crate::oidc::keys::verify(&conn, &kid, signed.as_bytes(), &signature).unwrap());
        assert!(!crate::oidc::keys::verify(&conn, &kid, signed.replace("bye", "hi").as_bytes(), &signature).unwrap());
        let encoded = signed.strip_prefix("SAMLResponse=").unwrap().split('&').next().unwrap();
        let raw =
            STANDARD.decode(percent_encoding::percent_decode_str(encoded).decode_utf8().unwrap().as_bytes()).unwrap();
        let xml = String::from_utf8(miniz_oxide::inflate::decompress_to_vec(&raw).unwrap()).unwrap();
        assert!(xml.contains("InResponseTo=\"_l5\"") && xml.contains("status:Success"), "{xml}");
        assert!(xml.contains(&format!("<saml:Issuer>{issuer}/saml/crm/metadata</saml:Issuer>")), "{xml}");
        // Signed out already: nothing to end, and that is a success.
        let again = run(&conn, &logout_xml("_l6", &app.entity_id, "zoë@example.com", None, 0), false).unwrap();
        assert_eq!((again.status, again.ended), (LogoutStatus::Success, false));
        // An application with a certificate must sign its LogoutRequests.
        remove_app(&conn, "crm").unwrap();
        let key = keys::rotate(&conn, Alg::Rs256).unwrap();
        app.sp_certificates = vec![certificate(&key, "sp", 0, 4_000_000_000).unwrap()];
        add_app(&conn, &app).unwrap();
        assert!(matches!(
            run(&conn, &logout_xml("_l7", &app.entity_id, "zoë@example.com", Some(&ours), 0), true),
            Err(SsoRefusal::Unsigned(_))
        ));
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A service provider's metadata as SP libraries write it: the default
    /// HTTP-POST ACS first, the Redirect logout service's ResponseLocation,
    /// the signing certificate (not the encryption one), AuthnRequestsSigned.
    #[test]
    fn service_provider_metadata_is_read() {
        let dir = std::env::temp_dir().join(format!("idbridge-saml-md-{}", crate::util::new_id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = crate::Store::open(&dir.join("tenant.db")).unwrap();
        let conn = store.lock();
        let key = keys::rotate(&conn, Alg::Rs256).unwrap();
        let signing = STANDARD.encode(certificate(&key, "signing", 0, 4_000_000_000).unwrap());
        let md = format!(
            "<?xml version=\"1.0\"?><md:EntityDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\" xmlns:ds=\"{DSIG}\" entityID=\"https://sp.example/ünï\">\
             <md:SPSSODescriptor AuthnRequestsSigned=\"true\" protocolSupportEnumeration=\"urn:oasis:names:tc:SAML:2.0:protocol\">\
             <md:KeyDescriptor use=\"signing\"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>\n{signing}\n</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>\
             <md:KeyDescriptor use=\"encryption\"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>AAAA</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor>\
             <md:SingleLogoutService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\" Location=\"https://sp.example/slo-post\"/>\
             <md:SingleLogoutService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect\" Location=\"https://sp.example/slo\" ResponseLocation=\"https://sp.example/slo/done\"/>\
             <md:NameIDFormat>urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress</md:NameIDFormat>\
             <md:AssertionConsumerService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Artifact\" Location=\"https://sp.example/art\" index=\"0\"/>\
             <md:AssertionConsumerService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\" Location=\"https://sp.example/acs1\" index=\"1\"/>\
             <md:AssertionConsumerService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\" Location=\"https://sp.example/acs2\" index=\"2\" isDefault=\"true\"/>\
             </md:SPSSODescriptor></md:EntityDescriptor>"
        );
        let sp = parse_sp_metadata(&md).unwrap();
        assert_eq!(sp.entity_id, "https://sp.example/ünï");
        assert_eq!(sp.acs_urls, vec!["https://sp.example/acs2".to_string(), "https://sp.example/acs1".to_string()]);
        assert_eq!(sp.slo_url.as_deref(), Some("https://sp.example/slo/done"));
        assert_eq!(sp.certificates, vec![STANDARD.decode(&signing).unwrap()]);
        assert!(sp.authn_requests_signed);
        assert_eq!(sp.name_id_format, Some(NameIdFormat::Email));
        let two = format!(
            "<md:EntitiesDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\">{}{}</md:EntitiesDescriptor>",
            md.trim_start_matches("<?xml version=\"1.0\"?>"),
            md.trim_start_matches("<?xml version=\"1.0\"?>")
        );
        assert!(parse_sp_metadata(&two).unwrap_err().to_string().contains("one EntityDescriptor"));
        let idp = metadata(&conn, "https://login.example.com", &App { slo_url: None, ..test_app() }).unwrap();
        assert!(parse_sp_metadata(&idp).unwrap_err().to_string().contains("not a service provider"));
        let no_acs = md.replace(
            "HTTP-POST\" Location=\"https://sp.example/acs",
            "HTTP-Artifact\" Location=\"https://sp.example/acs",
        );
        assert!(parse_sp_metadata(&no_acs).unwrap_err().to_string().contains("no HTTP-POST"));
        assert!(parse_sp_metadata("<x/>").is_err());
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn test_app() -> App {
        App {
            id: "crm".into(),
            name: "CRM".into(),
            entity_id: "https://crm.example.net/sp".into(),
            acs_urls: vec!["https://crm.example.net/acs".into()],
            name_id_format: NameIdFormat::Persistent,
            attributes: Vec::new(),
            sign_response: false,
            allowed_groups: Vec::new(),
            require_signed: false,
            sp_certificates: Vec::new(),
            slo_url: None,
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
