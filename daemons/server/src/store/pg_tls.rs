//! TLS for PostgreSQL connections, with rustls, following libpq's `sslmode`
//! (`docs/cluster.md`):
//! * `disable` — never TLS; `prefer` (the default) — TLS when the server offers it;
//!   `require` — refuse a server without TLS. As in libpq, these two encrypt without
//!   verifying the server's certificate (they protect against eavesdropping, not against an
//!   impostor).
//! * `verify-full` — TLS required and the certificate verified against the platform's trust
//!   store (`rustls-platform-verifier`) for the URL's host name. `verify-ca` (a chain check
//!   without the host name) is refused with a clear error: use `verify-full`.
//!
//! The `postgres` driver knows `disable`/`prefer`/`require` only: [`PgTls::for_url`] takes
//! `verify-full` out of the URL (as `require`) and verifies itself.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_platform_verifier::BuilderVerifierExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a database URL's TLS settings cannot be used.
pub(crate) fn tls_error(detail: impl std::fmt::Display) -> crate::error::ServerError {
    crate::error::ServerError::DatabaseUrl {
        detail: detail.to_string(),
    }
}

/// Makes TLS connections to PostgreSQL (cheap to clone).
#[derive(Clone)]
pub(crate) struct PgTls {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls").finish_non_exhaustive()
    }
}

impl PgTls {
    /// The URL for the driver (`verify-full` rewritten to `require`) and the TLS connector its
    /// `sslmode` asks for.
    pub(crate) fn for_url(url: &str) -> Result<(String, PgTls), crate::error::ServerError> {
        if url.contains("sslmode=verify-ca") {
            return Err(tls_error(
                "sslmode=verify-ca is not supported: use sslmode=verify-full (the certificate \
                 is verified for the host name)",
            ));
        }
        let verify = url.contains("sslmode=verify-full");
        let url = url.replace("sslmode=verify-full", "sslmode=require");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|err| tls_error(format!("setting up TLS for PostgreSQL: {err}")))?;
        let config = if verify {
            builder
                .with_platform_verifier()
                .map_err(|err| tls_error(format!("setting up TLS for PostgreSQL: {err}")))?
                .with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
                .with_no_client_auth()
        };
        Ok((
            url,
            PgTls {
                config: Arc::new(config),
            },
        ))
    }
}

/// `sslmode=prefer`/`require`: any certificate is taken (libpq's meaning), but the handshake
/// signatures are still checked, so the session is encrypted to whoever holds that
/// certificate's key.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, Self::Error> {
        Ok(PgTlsConnect {
            config: Arc::clone(&self.config),
            name: ServerName::try_from(domain.to_owned())?,
        })
    }
}

/// One connection's TLS handshake.
pub(crate) struct PgTlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await
                .map(PgTlsStream)
        })
    }
}

/// A TLS connection to PostgreSQL.
pub(crate) struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding (as libpq's `channel_binding=prefer` against a
        // server that offers none).
        ChannelBinding::none()
    }
}
