//! The connection that runs paged searches: a second connection to the
//! server a [`crate::connect::Session`] is bound to, opened the same way
//! (TLS, StartTLS, simple bind) and read with [`crate::wire`]'s decoder
//! instead of ldap3's. Everything else (binds, writes, DirSync, syncrepl,
//! rootDSE) stays on the session's ldap3 connection.
//!
//! A connection is opened on a search's first page and given back to the
//! session when the search has read its last page, so the next search reuses
//! it; a search that fails or is dropped half-way closes its connection
//! (unread answers may still be on the way).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use ldap3::asn1::{ASNTag, Boolean, Enumerated, OctetString, PL, Sequence, StructureTag, Tag, TagClass, write};
use ldap3::controls::RawControl;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::ber::{int, octets};
use crate::error::{LdapError, bind_hint};
use crate::settings::Secret;
use crate::wire::{self, Message, Response, WireError};

/// Bytes asked of the socket at a time (the receive buffer holds a page).
const READ_CHUNK: usize = 256 << 10;

/// The StartTLS extended operation (RFC 4511 §4.14.1).
const STARTTLS_OID: &str = "1.3.6.1.4.1.1466.20037";

/// What it takes to open another connection to a session's server.
#[derive(Debug, Clone)]
pub struct ReaderSettings {
    pub(crate) url: String,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: Option<TlsMode>,
    pub(crate) bind: Option<(String, Secret)>,
    pub(crate) connect_timeout: Duration,
}

/// How the connection is protected.
#[derive(Debug, Clone)]
pub(crate) enum TlsMode {
    /// `ldaps://`: TLS from the first byte.
    Ldaps(Arc<rustls::ClientConfig>),
    /// `ldap://` upgraded with StartTLS.
    StartTls(Arc<rustls::ClientConfig>),
}

/// The session's search connections: settings to open one, and one kept
/// idle between searches.
#[derive(Debug)]
pub struct Readers {
    settings: ReaderSettings,
    idle: Mutex<Option<SearchConnection>>,
}

impl Readers {
    pub(crate) fn new(settings: ReaderSettings) -> Arc<Readers> {
        Arc::new(Readers { settings, idle: Mutex::new(None) })
    }

    pub(crate) fn url(&self) -> &str {
        &self.settings.url
    }

    /// The idle connection, if there is one.
    pub(crate) fn take_idle(&self) -> Option<SearchConnection> {
        self.idle.lock().ok().and_then(|mut idle| idle.take())
    }

    /// Keeps a connection whose searches have all ended, for the next search.
    pub(crate) fn give_back(&self, connection: SearchConnection) {
        if let Ok(mut idle) = self.idle.lock() {
            *idle = Some(connection);
        }
    }

    pub(crate) async fn open(&self) -> Result<SearchConnection, LdapError> {
        SearchConnection::open(&self.settings).await
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A bound connection that sends requests and reads answers one message at a time.
pub struct SearchConnection {
    stream: Box<dyn Stream>,
    buffer: BytesMut,
    last_id: i64,
    url: String,
}

impl std::fmt::Debug for SearchConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchConnection").field("url", &self.url).field("last_id", &self.last_id).finish()
    }
}

/// Why reading a message failed.
enum ReadFailure {
    Io(std::io::Error),
    Closed,
    Wire(WireError),
}

impl ReadFailure {
    fn into_error(self, url: &str, operation: &str) -> LdapError {
        match self {
            ReadFailure::Io(e) => {
                LdapError::Connection { url: url.into(), operation: operation.into(), reason: e.to_string() }
            }
            ReadFailure::Closed => LdapError::Connection {
                url: url.into(),
                operation: operation.into(),
                reason: "the server closed the connection".into(),
            },
            ReadFailure::Wire(e) => LdapError::Protocol { url: url.into(), what: format!("{operation}: {e}") },
        }
    }
}

/// Reads until `buffer` holds a whole message, then decodes and removes it.
async fn read_message<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    buffer: &mut BytesMut,
) -> Result<Message, ReadFailure> {
    loop {
        if let Some(length) = wire::frame_len(buffer).map_err(ReadFailure::Wire)? {
            let message = buffer.get(..length).map(wire::decode).ok_or(ReadFailure::Closed)?;
            buffer.advance(length);
            return message.map_err(ReadFailure::Wire);
        }
        buffer.reserve(READ_CHUNK);
        match stream.read_buf(buffer).await {
            Ok(0) => return Err(ReadFailure::Closed),
            Ok(_) => {}
            Err(e) => return Err(ReadFailure::Io(e)),
        }
    }
}

/// `LDAPMessage { messageID, protocolOp, controls [0] OPTIONAL }` in BER.
fn encode_message(id: i64, op: Tag, controls: &[RawControl]) -> Vec<u8> {
    let mut parts = vec![int(id), op];
    if !controls.is_empty() {
        parts.push(Tag::StructureTag(StructureTag {
            id: 0,
            class: TagClass::Context,
            payload: PL::C(controls.iter().map(control).collect()),
        }));
    }
    let mut out = BytesMut::new();
    let message = Tag::Sequence(Sequence { inner: parts, ..Default::default() }).into_structure();
    // Encoding into memory cannot fail.
    match write::encode_into(&mut out, message) {
        Ok(()) => out.to_vec(),
        Err(_) => Vec::new(),
    }
}

/// `Control { controlType, criticality DEFAULT FALSE, controlValue OPTIONAL }`.
fn control(raw: &RawControl) -> StructureTag {
    let mut fields = vec![octets(raw.ctype.as_bytes().to_vec())];
    if raw.crit {
        fields.push(Tag::Boolean(Boolean { inner: true, ..Default::default() }));
    }
    if let Some(value) = &raw.val {
        fields.push(octets(value.clone()));
    }
    Tag::Sequence(Sequence { inner: fields, ..Default::default() }).into_structure()
}

fn context_octets(id: u64, bytes: &[u8]) -> Tag {
    Tag::OctetString(OctetString { id, class: TagClass::Context, inner: bytes.to_vec() })
}

/// A search request (RFC 4511 §4.5.1): no alias dereferencing, no limits of
/// our own (the server's apply), values wanted.
pub(crate) fn search_request(base: &str, scope: ldap3::Scope, filter: &str, attrs: &[String]) -> Option<Tag> {
    let scope = match scope {
        ldap3::Scope::Base => 0,
        ldap3::Scope::OneLevel => 1,
        ldap3::Scope::Subtree => 2,
    };
    let filter = ldap3::parse_filter(filter).ok()?;
    Some(Tag::Sequence(Sequence {
        id: 3,
        class: TagClass::Application,
        inner: vec![
            octets(base.as_bytes().to_vec()),
            Tag::Enumerated(Enumerated { inner: scope, ..Default::default() }),
            Tag::Enumerated(Enumerated { inner: 0, ..Default::default() }),
            int(0),
            int(0),
            Tag::Boolean(Boolean { inner: false, ..Default::default() }),
            filter,
            Tag::Sequence(Sequence {
                inner: attrs.iter().map(|a| octets(a.as_bytes().to_vec())).collect(),
                ..Default::default()
            }),
        ],
    }))
}

async fn handshake(
    settings: &ReaderSettings,
    config: &Arc<rustls::ClientConfig>,
    tcp: tokio::net::TcpStream,
) -> Result<Box<dyn Stream>, LdapError> {
    let name = rustls_pki_types::ServerName::try_from(settings.host.clone()).map_err(|e| LdapError::Connection {
        url: settings.url.clone(),
        operation: "starting TLS".into(),
        reason: format!("{:?} is not a valid TLS server name: {e}", settings.host),
    })?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
    match tokio::time::timeout(settings.connect_timeout, connector.connect(name, tcp)).await {
        Ok(Ok(tls)) => Ok(Box::new(tls)),
        Ok(Err(e)) => Err(LdapError::Connection {
            url: settings.url.clone(),
            operation: "starting TLS".into(),
            reason: format!("TLS failed: {e}"),
        }),
        Err(_) => Err(LdapError::Connection {
            url: settings.url.clone(),
            operation: "starting TLS".into(),
            reason: format!("no TLS handshake within {:?}", settings.connect_timeout),
        }),
    }
}

impl SearchConnection {
    /// Connects, starts TLS as configured and binds, each step within the
    /// connect timeout.
    pub(crate) async fn open(settings: &ReaderSettings) -> Result<SearchConnection, LdapError> {
        let url = settings.url.clone();
        let failed = |operation: &str, reason: String| LdapError::Connection {
            url: url.clone(),
            operation: operation.into(),
            reason,
        };
        let endpoint = (settings.host.as_str(), settings.port);
        let mut tcp = match tokio::time::timeout(settings.connect_timeout, crate::connect::open_socket(endpoint)).await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(failed("connecting", e.to_string())),
            Err(_) => return Err(failed("connecting", format!("no answer within {:?}", settings.connect_timeout))),
        };
        let mut buffer = BytesMut::with_capacity(READ_CHUNK);
        let stream: Box<dyn Stream> = match &settings.tls {
            None => Box::new(tcp),
            Some(TlsMode::Ldaps(config)) => handshake(settings, config, tcp).await?,
            Some(TlsMode::StartTls(config)) => {
                let op = Tag::Sequence(Sequence {
                    id: 23,
                    class: TagClass::Application,
                    inner: vec![context_octets(0, STARTTLS_OID.as_bytes())],
                });
                let request = encode_message(1, op, &[]);
                let exchange = async {
                    tcp.write_all(&request).await.map_err(ReadFailure::Io)?;
                    read_message(&mut tcp, &mut buffer).await
                };
                let answer = match tokio::time::timeout(settings.connect_timeout, exchange).await {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(e)) => return Err(e.into_error(&url, "StartTLS")),
                    Err(_) => {
                        return Err(failed("StartTLS", format!("no answer within {:?}", settings.connect_timeout)));
                    }
                };
                match answer.response {
                    Response::Extended(result) if result.code == 0 => {}
                    Response::Extended(result) => {
                        return Err(failed(
                            "StartTLS",
                            format!("the server refused StartTLS (result {}: {})", result.code, result.message),
                        ));
                    }
                    _ => return Err(failed("StartTLS", "unexpected answer to StartTLS".into())),
                }
                handshake(settings, config, tcp).await?
            }
        };
        let mut connection = SearchConnection { stream, buffer, last_id: 1, url: url.clone() };
        if let Some((dn, password)) = &settings.bind {
            let op = Tag::Sequence(Sequence {
                id: 0,
                class: TagClass::Application,
                inner: vec![int(3), octets(dn.as_bytes().to_vec()), context_octets(0, password.expose().as_bytes())],
            });
            let id = connection.send(op, &[]).await?;
            let answer = connection.receive_for(id, settings.connect_timeout, "binding").await?;
            match answer {
                Response::Bind(result) if result.code == 0 => {}
                Response::Bind(result) => {
                    return Err(LdapError::Bind {
                        url,
                        bind_dn: dn.clone(),
                        code: result.code,
                        hint: bind_hint(result.code, &result.message),
                        message: if result.message.is_empty() {
                            format!("LDAP result {}", result.code)
                        } else {
                            result.message
                        },
                    });
                }
                _ => return Err(LdapError::Protocol { url, what: "unexpected answer to a bind".into() }),
            }
        }
        Ok(connection)
    }

    /// Sends one request; its message id.
    pub(crate) async fn send(&mut self, op: Tag, controls: &[RawControl]) -> Result<i64, LdapError> {
        // Message ids are positive 32-bit integers (RFC 4511 §4.1.1.1).
        self.last_id = if self.last_id >= i64::from(i32::MAX) { 1 } else { self.last_id + 1 };
        let bytes = encode_message(self.last_id, op, controls);
        self.stream.write_all(&bytes).await.map_err(|e| LdapError::Connection {
            url: self.url.clone(),
            operation: "sending a request".into(),
            reason: e.to_string(),
        })?;
        Ok(self.last_id)
    }

    /// The next answer to request `id`, within `timeout`. A notice of
    /// disconnection (message id 0) ends the connection with its reason;
    /// other unsolicited messages are skipped.
    pub(crate) async fn receive_for(
        &mut self,
        id: i64,
        timeout: Duration,
        operation: &str,
    ) -> Result<Response, LdapError> {
        loop {
            let read = tokio::time::timeout(timeout, read_message(&mut self.stream, &mut self.buffer)).await;
            let message = match read {
                Ok(Ok(message)) => message,
                Ok(Err(e)) => return Err(e.into_error(&self.url, operation)),
                Err(_) => {
                    return Err(LdapError::Connection {
                        url: self.url.clone(),
                        operation: operation.into(),
                        reason: format!("no answer within {timeout:?}"),
                    });
                }
            };
            if message.id == id {
                return Ok(message.response);
            }
            if message.id == 0
                && let Response::Extended(notice) = message.response
            {
                return Err(LdapError::Connection {
                    url: self.url.clone(),
                    operation: operation.into(),
                    reason: format!("the server ended the connection (result {}: {})", notice.code, notice.message),
                });
            }
        }
    }
}

/// A certificate verifier that accepts any certificate, for
/// `tls.insecure_skip_verify` (warned about at every connect).
#[derive(Debug)]
pub(crate) struct AcceptAnyCertificate(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_their_controls_and_decode_as_ber() {
        let op = search_request("dc=exämple", ldap3::Scope::Subtree, "(cn=Zoë*)", &["cn".into()]).unwrap();
        let bytes = encode_message(9, op, &[crate::ber::paged_control(1000, b"c".to_vec())]);
        assert_eq!(wire::frame_len(&bytes), Ok(Some(bytes.len())));
        // The same bytes as ldap3's own parser reads them.
        let (_, tag) = ldap3::asn1::parse_tag(&bytes).unwrap();
        let parts = tag.expect_constructed().unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1].id, 3);
        assert_eq!(parts[2].class, TagClass::Context);
        assert!(search_request("", ldap3::Scope::Base, "(cn=", &[]).is_none());
    }
}
