//! How [`run`](super::run) serves: TLS, and the limits every call is held to.

use std::path::Path;
use std::time::Duration;

use tonic::codegen::http;
use tonic::transport::{Identity, Server, ServerTlsConfig};

/// The largest request message accepted, unless configured otherwise (gRPC's usual).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// TLS and limits for [`run`](super::run).
#[derive(Clone)]
pub struct Transport {
    tls: Option<Identity>,
    /// Larger request messages are refused with RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
    /// A call still running after this long is answered CANCELLED (a client's shorter
    /// `grpc-timeout` wins).
    pub request_timeout: Duration,
    /// Calls one connection may have in flight; HTTP/2 streams beyond wait.
    pub concurrency_per_connection: usize,
}

impl Default for Transport {
    fn default() -> Transport {
        Transport {
            tls: None,
            max_message_bytes: MAX_MESSAGE_BYTES,
            request_timeout: Duration::from_secs(10),
            concurrency_per_connection: 1024,
        }
    }
}

impl std::fmt::Debug for Transport {
    // By hand: the derived one would print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("tls", &self.tls.is_some())
            .field("max_message_bytes", &self.max_message_bytes)
            .field("request_timeout", &self.request_timeout)
            .field(
                "concurrency_per_connection",
                &self.concurrency_per_connection,
            )
            .finish()
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading `{path}`: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "`{cert}` and `{key}` are not a usable PEM certificate chain and private key: {reason}"
    )]
    Invalid {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        reason: String,
    },
}

impl Transport {
    /// Serves TLS with the PEM certificate chain and private key in these files, checked
    /// here so that a bad pair stops the start, not the first handshake.
    pub fn with_tls(mut self, cert: &Path, key: &Path) -> Result<Transport, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let identity = Identity::from_pem(read(cert)?, read(key)?);
        Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity.clone()))
            .map_err(|e| TlsError::Invalid {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                reason: std::error::Error::source(&e)
                    .map_or_else(|| e.to_string(), ToString::to_string),
            })?;
        self.tls = Some(identity);
        Ok(self)
    }

    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A server builder with these settings.
    pub(super) fn builder(&self) -> Result<Server, tonic::transport::Error> {
        let builder = Server::builder()
            .concurrency_limit_per_connection(self.concurrency_per_connection)
            .max_concurrent_streams(u32::try_from(self.concurrency_per_connection).ok())
            .timeout(self.request_timeout);
        match &self.tls {
            Some(identity) => builder.tls_config(ServerTlsConfig::new().identity(identity.clone())),
            None => Ok(builder),
        }
    }
}

/// tonic answers a request over the size limit with OUT_OF_RANGE; gRPC's status code
/// table says RESOURCE_EXHAUSTED, which is also what clients retrying on size expect.
/// No handler of ours answers OUT_OF_RANGE, so the code alone tells the case.
pub(super) fn oversize_is_resource_exhausted<B>(
    mut response: http::Response<B>,
) -> http::Response<B> {
    let headers = response.headers_mut();
    let out_of_range = http::HeaderValue::from(tonic::Code::OutOfRange as i32);
    if headers.get("grpc-status") == Some(&out_of_range) {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::ResourceExhausted as i32),
        );
    }
    response
}

/// A TCP connection that tells HTTP/2 it writes one buffer at a time, so that the replies
/// of many calls go out in one write.
///
/// h2 copies a DATA frame into its connection's write buffer when it is smaller than its
/// chain threshold and otherwise sends it by itself, flushing once for it: 256 bytes on a
/// connection that writes vectored, 1,024 on one that does not. A Decide reply on the
/// sample catalog is ~450 bytes, so on a vectored connection every reply cost a `writev`
/// of its own (1.8 a call against 0.8 a Ping, each waking the peer); copied, the replies
/// ready together leave together. A reply past 1 KiB goes out as two writes, the buffer
/// and then its payload, where it was one `writev`. Plaintext only: under TLS, rustls
/// sits between h2 and this connection and reports vectored writes itself; its own
/// vectored writes are passed through.
#[derive(Debug)]
pub(super) struct Unvectored(pub tokio::net::TcpStream);

impl tokio::io::AsyncRead for Unvectored {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Unvectored {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }

    /// Passed through for a caller that writes vectored anyway (rustls under TLS): the
    /// flag is a hint to h2, not a promise.
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl tonic::transport::server::Connected for Unvectored {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}
