//! One exchange with one upstream: a fresh socket per query (random source port, `SO_MARK`),
//! the query forwarded byte-for-byte, the answer validated against the query.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

use hickory_proto::op::{Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable as _, BinDecoder};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, UdpSocket};

/// Largest DNS message (UDP datagram or TCP frame).
pub(crate) const MAX_MESSAGE: usize = 65535;

#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("upstream i/o: {0}")]
    Io(#[from] io::Error),
    #[error("upstream answer does not match the query: {0}")]
    Mismatch(&'static str),
    #[error("upstream closed the connection")]
    Closed,
}

/// Transport a query arrived on (and is forwarded over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// What an upstream answer must echo.
#[derive(Debug, Clone)]
pub(crate) struct Expect {
    pub id: u16,
    pub op_code: OpCode,
    pub queries: Vec<Query>,
}

impl Expect {
    pub(crate) fn of(query: &Message) -> Self {
        Expect { id: query.id(), op_code: query.op_code(), queries: query.queries().to_vec() }
    }

    /// Check that `resp` answers the query (header and question section only; the rest is
    /// parsed later, and only for registry names). Returns the response header.
    pub(crate) fn validate(&self, resp: &[u8]) -> Result<Header, UpstreamError> {
        let mut dec = BinDecoder::new(resp);
        let header = Header::read(&mut dec).map_err(|_| UpstreamError::Mismatch("bad header"))?;
        if header.message_type() != MessageType::Response {
            return Err(UpstreamError::Mismatch("not a response"));
        }
        if header.id() != self.id {
            return Err(UpstreamError::Mismatch("id"));
        }
        if header.op_code() != self.op_code {
            return Err(UpstreamError::Mismatch("opcode"));
        }
        // Servers may answer FORMERR/NOTIMP/... without echoing the question.
        if header.query_count() == 0 && header.response_code() != ResponseCode::NoError {
            return Ok(header);
        }
        let queries = Message::read_queries(&mut dec, usize::from(header.query_count()))
            .map_err(|_| UpstreamError::Mismatch("bad question"))?;
        // Query equality: name case-insensitively (0x20-safe), type and class.
        if queries != self.queries {
            return Err(UpstreamError::Mismatch("question"));
        }
        Ok(header)
    }
}

/// Upstream socket factory (fresh sockets, optional mark).
#[derive(Debug)]
pub(crate) struct Upstream {
    mark: Option<u32>,
    mark_warned: AtomicBool,
}

impl Upstream {
    pub(crate) fn new(mark: Option<u32>) -> Self {
        Upstream { mark, mark_warned: AtomicBool::new(false) }
    }

    fn apply_mark(&self, sock: socket2::SockRef<'_>) -> io::Result<()> {
        let Some(mark) = self.mark else { return Ok(()) };
        match sock.set_mark(mark) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                if !self.mark_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        mark,
                        "dns: cannot set SO_MARK on upstream sockets (EPERM, needs CAP_NET_ADMIN); continuing unmarked"
                    );
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// One UDP exchange. Datagrams that do not answer the query (wrong id/question) are ignored;
    /// the caller bounds the wait with the per-attempt timeout.
    pub(crate) async fn exchange_udp(
        &self,
        server: SocketAddr,
        query: &[u8],
        expect: &Expect,
    ) -> Result<(Vec<u8>, Header), UpstreamError> {
        let sock = UdpSocket::bind(SocketAddr::new(unspecified_like(server.ip()), 0)).await?;
        self.apply_mark(socket2::SockRef::from(&sock))?;
        sock.connect(server).await?;
        sock.send(query).await?;
        // Room for the largest datagram, not zeroed (memset of 64 KiB per query showed in perf).
        let mut buf = Vec::with_capacity(MAX_MESSAGE);
        loop {
            buf.clear();
            let n = sock.recv_buf(&mut buf).await?;
            match expect.validate(&buf[..n]) {
                Ok(header) => {
                    buf.truncate(n);
                    buf.shrink_to_fit();
                    return Ok((buf, header));
                }
                Err(e) => {
                    tracing::debug!(%server, error = %e, "dns: ignoring upstream datagram");
                }
            }
        }
    }

    /// One TCP exchange (fresh connection, one length-prefixed query and answer).
    pub(crate) async fn exchange_tcp(
        &self,
        server: SocketAddr,
        query: &[u8],
        expect: &Expect,
    ) -> Result<(Vec<u8>, Header), UpstreamError> {
        let sock = match server {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        self.apply_mark(socket2::SockRef::from(&sock))?;
        let mut stream = sock.connect(server).await?;
        stream.set_nodelay(true)?;
        let len =
            u16::try_from(query.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too large"))?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        let mut lenbuf = [0u8; 2];
        stream.read_exact(&mut lenbuf).await.map_err(eof_closed)?;
        let n = usize::from(u16::from_be_bytes(lenbuf));
        let mut buf = vec![0u8; n];
        stream.read_exact(&mut buf).await.map_err(eof_closed)?;
        let header = expect.validate(&buf)?;
        Ok((buf, header))
    }

    pub(crate) async fn exchange(
        &self,
        transport: Transport,
        server: SocketAddr,
        query: &[u8],
        expect: &Expect,
    ) -> Result<(Vec<u8>, Header), UpstreamError> {
        match transport {
            Transport::Udp => self.exchange_udp(server, query, expect).await,
            Transport::Tcp => self.exchange_tcp(server, query, expect).await,
        }
    }
}

fn eof_closed(e: io::Error) -> UpstreamError {
    if e.kind() == io::ErrorKind::UnexpectedEof { UpstreamError::Closed } else { UpstreamError::Io(e) }
}

fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}
