//! Listeners, per-query policy and synthesized responses.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Header, Message, MessageType, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable as _, BinDecoder};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::answer::{self, name_key};
use super::judge::{self, Decision};
use super::peer::Client;
use super::sanitize;
use super::upstream::{Expect, MAX_MESSAGE, Transport, Upstream, UpstreamError};
use super::{Action, Config, DnsPolicy, PolicyMode, Refusal, Stats};

/// Queries handled concurrently; beyond this, SERVFAIL (counted in `overloaded`).
const MAX_INFLIGHT: usize = 4096;
/// Concurrent client TCP connections; beyond this, new connections are closed.
const MAX_TCP_CONNS: usize = 1024;
/// Pipelined queries in flight per TCP connection (reading pauses beyond this).
const MAX_TCP_PIPELINE: usize = 32;
/// A client TCP connection with no new query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Identical unknown names are logged at most once per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
const LOG_LIMITER_MAX: usize = 8192;
/// EDNS payload size advertised in synthesized responses.
const EDNS_PAYLOAD: u16 = 1232;
/// Renewals of one entry before giving up with SERVFAIL.
const MAX_RENEWALS: u32 = 3;

/// The DNS forwarder: bound sockets plus shared state. [`Forwarder::run`] serves them.
pub struct Forwarder {
    inner: Arc<Inner>,
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    addrs: Vec<SocketAddr>,
}

struct Inner {
    cfg: Config,
    policy: Arc<dyn DnsPolicy>,
    stats: Arc<Stats>,
    upstream: Upstream,
    inflight: Arc<Semaphore>,
    tcp_conns: Arc<Semaphore>,
    log_limiter: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("addrs", &self.addrs)
            .field("upstreams", &self.inner.cfg.upstreams)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Bind UDP and TCP on every `cfg.listen` address. Port 0 picks a free port for the first
    /// address (the same for UDP and TCP); later port-0 addresses reuse it when they can.
    pub async fn bind(mut cfg: Config, policy: Arc<dyn DnsPolicy>) -> io::Result<Forwarder> {
        if cfg.min_ttl < super::MIN_TTL_FLOOR {
            tracing::warn!(
                floor = ?cfg.min_ttl,
                minimum = ?super::MIN_TTL_FLOOR,
                "dns: TTL floor raised to the minimum (a shorter one would re-resolve TTL-0 names in a loop)"
            );
            cfg.min_ttl = super::MIN_TTL_FLOOR;
        }
        if cfg.listen.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "dns: no listen address"));
        }
        if cfg.upstreams.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "dns: no upstream"));
        }
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        let mut addrs = Vec::new();
        let mut chosen_port: Option<u16> = None;
        for &want in &cfg.listen {
            let pair = match (want.port(), chosen_port) {
                (0, Some(port)) => {
                    let mut same = want;
                    same.set_port(port);
                    match bind_pair(same) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::debug!(addr = %same, error = %e, "dns: shared port unavailable, picking another");
                            bind_pair(want)?
                        }
                    }
                }
                _ => bind_pair(want)?,
            };
            let (u, t) = pair;
            let local = u.local_addr()?;
            chosen_port.get_or_insert(local.port());
            udp.push(u);
            tcp.push(t);
            addrs.push(local);
        }
        let inner = Arc::new(Inner {
            upstream: Upstream::new(cfg.upstream_mark),
            cfg,
            policy,
            stats: Arc::new(Stats::default()),
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)),
            tcp_conns: Arc::new(Semaphore::new(MAX_TCP_CONNS)),
            log_limiter: Mutex::new(HashMap::new()),
        });
        tracing::debug!(listen = ?addrs, upstreams = ?inner.cfg.upstreams, "dns: forwarder bound");
        Ok(Forwarder { inner, udp, tcp, addrs })
    }

    /// Bound addresses (UDP and TCP on the same addr:port).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// Counters, shared with the running forwarder.
    pub fn stats(&self) -> Arc<Stats> {
        self.inner.stats.clone()
    }

    /// Serve until `shutdown` completes. Listeners and client TCP connections are then closed;
    /// queries already being answered finish on their own (bounded by the upstream timeouts).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for sock in self.udp {
            tasks.spawn(udp_loop(self.inner.clone(), Arc::new(sock)));
        }
        for listener in self.tcp {
            tasks.spawn(tcp_accept_loop(self.inner.clone(), listener, stop_rx.clone()));
        }
        shutdown.await;
        tracing::info!("dns: forwarder shutting down");
        let _ = stop_tx.send(true);
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    if addr.port() != 0 {
        return Ok((bind_udp(addr)?, bind_tcp(addr)?));
    }
    // Port 0: let UDP pick, then take the same port for TCP (retry if it is taken for TCP).
    let mut last_err = None;
    for _ in 0..32 {
        let udp = bind_udp(addr)?;
        let mut same = addr;
        same.set_port(udp.local_addr()?.port());
        match bind_tcp(same) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

fn new_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        // [::] and 0.0.0.0 on the same port must not collide.
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    Ok(sock)
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

async fn udp_loop(inner: Arc<Inner>, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let local = sock.local_addr().ok();
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "dns: udp recv");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        Stats::inc(&inner.stats.queries_udp);
        let bytes = buf[..n].to_vec();
        let Ok(permit) = inner.inflight.clone().try_acquire_owned() else {
            if let Some(resp) = inner.overloaded(&bytes) {
                let _ = sock.send_to(&resp, peer).await;
            }
            continue;
        };
        let inner = inner.clone();
        let sock = sock.clone();
        tokio::spawn(async move {
            let client = local.map(|server| Client { addr: peer, server, tcp: false });
            if let Some(resp) = inner.handle(&bytes, Transport::Udp, client).await
                && let Err(e) = sock.send_to(&resp, peer).await
            {
                tracing::debug!(%peer, error = %e, "dns: udp send");
            }
            drop(permit);
        });
    }
}

async fn tcp_accept_loop(inner: Arc<Inner>, listener: TcpListener, stop: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "dns: tcp accept");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let Ok(conn_permit) = inner.tcp_conns.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "dns: too many tcp connections, closing");
            continue;
        };
        let inner = inner.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            tcp_conn(inner, stream, stop).await;
            drop(conn_permit);
        });
    }
}

async fn tcp_conn(inner: Arc<Inner>, stream: TcpStream, mut stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let client = match (stream.peer_addr(), stream.local_addr()) {
        (Ok(addr), Ok(server)) => Some(Client { addr, server, tcp: true }),
        _ => None,
    };
    let (mut rd, wr) = stream.into_split();
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let pipeline = Arc::new(Semaphore::new(MAX_TCP_PIPELINE));
    loop {
        let Ok(slot) = pipeline.clone().acquire_owned().await else {
            return;
        };
        let read = async {
            let mut lenbuf = [0u8; 2];
            rd.read_exact(&mut lenbuf).await?;
            let mut msg = vec![0u8; usize::from(u16::from_be_bytes(lenbuf))];
            rd.read_exact(&mut msg).await?;
            io::Result::Ok(msg)
        };
        let bytes = tokio::select! {
            _ = stop.changed() => return,
            r = tokio::time::timeout(TCP_IDLE, read) => match r {
                Ok(Ok(b)) => b,
                Ok(Err(_)) | Err(_) => return, // EOF, error or idle
            },
        };
        Stats::inc(&inner.stats.queries_tcp);
        let Ok(permit) = inner.inflight.clone().try_acquire_owned() else {
            if let Some(resp) = inner.overloaded(&bytes) {
                write_frame(&wr, &resp).await;
            }
            continue;
        };
        let inner = inner.clone();
        let wr = wr.clone();
        tokio::spawn(async move {
            if let Some(resp) = inner.handle(&bytes, Transport::Tcp, client).await {
                write_frame(&wr, &resp).await;
            }
            drop(permit);
            drop(slot);
        });
    }
}

async fn write_frame(wr: &tokio::sync::Mutex<OwnedWriteHalf>, msg: &[u8]) {
    let Ok(len) = u16::try_from(msg.len()) else {
        return;
    };
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    let mut w = wr.lock().await;
    if let Err(e) = w.write_all(&framed).await {
        tracing::debug!(error = %e, "dns: tcp write");
    }
}

/// A response to `query` with `rcode` and no records (question, id, RD/CD copied; RA set; OPT
/// when the query had one).
fn synthesize(query: &Message, rcode: ResponseCode) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(query.checking_disabled())
        .set_response_code(rcode);
    m.add_queries(query.queries().iter().cloned());
    if query.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        m.set_edns(edns);
    }
    match m.to_vec() {
        Ok(v) => v,
        Err(_) => Message::error_msg(query.id(), query.op_code(), rcode).to_vec().unwrap_or_default(),
    }
}

/// A header-only error response for bytes that are not a parseable query but have a query
/// header. None: not even that (or a response), drop it.
fn header_error(bytes: &[u8], rcode: ResponseCode) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(bytes)).ok()?;
    if header.message_type() != MessageType::Query {
        return None;
    }
    let mut m = Message::error_msg(header.id(), header.op_code(), rcode);
    m.set_recursion_desired(header.recursion_desired()).set_recursion_available(true);
    m.to_vec().ok()
}

impl Inner {
    fn overloaded(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        Stats::inc(&self.stats.overloaded);
        Stats::inc(&self.stats.servfail);
        match Message::from_vec(bytes) {
            Ok(q) if q.message_type() == MessageType::Query => Some(synthesize(&q, ResponseCode::ServFail)),
            Ok(_) => None,
            Err(_) => header_error(bytes, ResponseCode::ServFail),
        }
    }

    fn servfail(&self, query: &Message) -> Vec<u8> {
        Stats::inc(&self.stats.servfail);
        synthesize(query, ResponseCode::ServFail)
    }

    /// The response to one client message (None: send nothing).
    async fn handle(&self, bytes: &[u8], transport: Transport, client: Option<Client>) -> Option<Vec<u8>> {
        let query = match Message::from_vec(bytes) {
            Ok(q) => q,
            Err(e) => {
                tracing::debug!(error = %e, "dns: malformed query");
                let resp = header_error(bytes, ResponseCode::FormErr)?;
                Stats::inc(&self.stats.formerr);
                return Some(resp);
            }
        };
        if query.message_type() != MessageType::Query {
            return None;
        }
        if query.queries().is_empty() {
            Stats::inc(&self.stats.formerr);
            return Some(synthesize(&query, ResponseCode::FormErr));
        }
        let mode = self.policy.mode();
        let (learn, unregistered) =
            match judge::decide(&query, self.policy.as_ref(), self.cfg.unknown_names, &self.cfg.search) {
                Decision::Block { rcode, reason, report } => {
                    Stats::inc(&self.stats.blocked);
                    Stats::inc(self.stats.refused(reason));
                    let action = if rcode == ResponseCode::NXDomain { Action::Nxdomain } else { Action::Refused };
                    for (i, name, why) in report {
                        self.report(&query, i, name, why, action, client);
                    }
                    return Some(synthesize(&query, rcode));
                }
                Decision::Forward { learn, unregistered } => (learn, unregistered),
            };
        if !unregistered.is_empty() && mode == PolicyMode::Audit {
            Stats::inc(&self.stats.audit_would_refuse);
        }
        let action = if mode == PolicyMode::Audit { Action::AuditWouldRefuse } else { Action::Answered };
        for (i, name, why) in unregistered {
            self.report(&query, i, name, why, action, client);
        }
        // Under REGISTRY_ONLY the upstream gets the query as understood (allowed EDNS options
        // only) with an id of our own; otherwise the client's bytes.
        let sanitized;
        let (out, id): (&[u8], u16) = if mode == PolicyMode::Enforce {
            let id = rand::random::<u16>();
            sanitized = match sanitize::sanitize(&query, self.cfg.forward_ecs, id) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "dns: cannot re-encode the query");
                    Stats::inc(&self.stats.formerr);
                    return Some(synthesize(&query, ResponseCode::FormErr));
                }
            };
            if sanitized.stripped > 0 {
                Stats::add(&self.stats.stripped, sanitized.stripped as u64);
                tracing::debug!(stripped = sanitized.stripped, "dns: query records/EDNS options not forwarded");
            }
            (&sanitized.bytes, id)
        } else {
            (bytes, query.id())
        };
        let Ok((mut resp, header)) = self.forward(out, id, &query, transport).await else {
            return Some(self.servfail(&query));
        };
        let answered_at = Instant::now();
        resp[..2].copy_from_slice(&query.id().to_be_bytes());
        if learn.is_empty() {
            Stats::inc(&self.stats.answered);
            self.observe_unregistered(&query, &resp);
            return Some(resp);
        }
        Some(self.answer_matched(resp, header, &query, &learn, answered_at, client).await)
    }

    /// Tell the policy which addresses an unregistered name had (nothing is allowed; `enforcer
    /// suggest` uses it to name the destinations it drafts entries for).
    fn observe_unregistered(&self, query: &Message, resp: &[u8]) {
        let Ok(m) = Message::from_vec(resp) else { return };
        let addrs: Vec<std::net::IpAddr> = m
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                hickory_proto::rr::RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
                hickory_proto::rr::RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        if !addrs.is_empty() {
            self.policy.observe(&name_key(query.queries()[0].name()), &addrs);
        }
    }

    fn report(&self, query: &Message, i: usize, name: String, why: judge::Why, action: Action, client: Option<Client>) {
        let q = &query.queries()[i];
        let r = Refusal { queried: name_key(q.name()), name, qtype: q.query_type().to_string(), action, why, client };
        if matches!(why, judge::Why::NotInRegistry | judge::Why::SearchExpansion) {
            self.log_unknown(&r);
        }
        self.policy.report(&r);
    }

    /// Forward to the upstreams in order (`bytes` carries id `id`). A timeout, error, mismatching
    /// answer, SERVFAIL or REFUSED moves to the next; if none gives a good answer, the last
    /// SERVFAIL/REFUSED answer is returned, else Err.
    async fn forward(
        &self,
        bytes: &[u8],
        id: u16,
        query: &Message,
        transport: Transport,
    ) -> Result<(Vec<u8>, Header), ()> {
        let mut expect = Expect::of(query);
        expect.id = id;
        let mut fallback = None;
        for &server in &self.cfg.upstreams {
            let attempt = self.upstream.exchange(transport, server, bytes, &expect);
            match tokio::time::timeout(self.cfg.timeout, attempt).await {
                Err(_) => {
                    Stats::inc(&self.stats.upstream_timeouts);
                    tracing::debug!(%server, ?transport, "dns: upstream timeout");
                }
                Ok(Err(e)) => {
                    tracing::debug!(%server, ?transport, error = %e, "dns: upstream failed");
                    if let UpstreamError::Mismatch(_) = e {
                        tracing::warn!(%server, error = %e, "dns: upstream answer rejected");
                    }
                }
                Ok(Ok((resp, header))) => match header.response_code() {
                    ResponseCode::ServFail | ResponseCode::Refused => {
                        tracing::debug!(%server, rcode = %header.response_code(), "dns: upstream error answer, trying next");
                        fallback = Some((resp, header));
                    }
                    _ => return Ok((resp, header)),
                },
            }
        }
        fallback.ok_or(())
    }

    /// Registered questions: filter the answer, learn each question's addresses, and only then
    /// answer. Every learned entry outlives the release of the answer by at least the floor.
    async fn answer_matched(
        &self,
        resp: Vec<u8>,
        header: Header,
        query: &Message,
        learn: &[(usize, enforcer_common::ServiceId)],
        answered_at: Instant,
        client: Option<Client>,
    ) -> Vec<u8> {
        let qname0 = name_key(query.queries()[learn[0].0].name());
        // Truncated (the client retries over TCP) or negative answers: pass through unchanged,
        // learn nothing. A truncated answer's addresses are not learned, so a client using them
        // anyway is still decided by the kernel.
        if header.truncated() || header.response_code() != ResponseCode::NoError {
            Stats::inc(&self.stats.answered);
            return resp;
        }
        let mut msg = match Message::from_vec(&resp) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(name = qname0, error = %e, "dns: cannot parse upstream answer for a registry name");
                return self.servfail(query);
            }
        };
        let dropped = answer::filter_rebinding(&mut msg, self.policy.as_ref());
        if dropped > 0 {
            Stats::add(&self.stats.rebinding_dropped, dropped as u64);
            tracing::warn!(
                name = qname0,
                dropped,
                "dns: dropped private/loopback/link-local addresses from a registry name's answer (rebinding protection)"
            );
            self.report(query, learn[0].0, qname0.clone(), judge::Why::Rebinding, Action::RebindingDropped, client);
        }
        let floor = self.cfg.min_ttl.max(super::MIN_TTL_FLOOR);
        let mut learned = Vec::with_capacity(learn.len());
        for &(i, service) in learn {
            let q = &query.queries()[i];
            let (addrs, min_ttl) = answer::collect(&msg, q.name());
            if addrs.is_empty() {
                continue;
            }
            let qname = name_key(q.name());
            let life = answer::lifetime(min_ttl.unwrap_or(0), &self.cfg);
            let until = match self.learn(service, &qname, &addrs, life).await {
                Ok(u) => u,
                Err(e) => {
                    Stats::inc(&self.stats.learn_failures);
                    tracing::warn!(name = qname, service = service.get(), error = %e, "dns: learning addresses failed, answering SERVFAIL");
                    self.report(query, i, qname, judge::Why::MapWrite, Action::LearnFailed, client);
                    return self.servfail(query);
                }
            };
            Stats::add(&self.stats.learned_addrs, addrs.len() as u64);
            tracing::debug!(name = qname, service = service.get(), ?addrs, ?life, "dns: learned");
            learned.push((i, service, qname, addrs, until, life));
        }
        if !learned.is_empty() {
            self.stats.learn_delay.record(answered_at.elapsed());
        }
        // The guarantee: each entry outlives the release (now) by the floor, however long the
        // learns took (a slow map write, several questions, a grace of 0). Renewals are rare: a
        // lifetime is floor + grace from the moment of its write.
        for (i, service, qname, addrs, mut until, life) in learned {
            let mut tries = 0;
            while until < Instant::now() + floor {
                tries += 1;
                if tries > MAX_RENEWALS {
                    Stats::inc(&self.stats.learn_failures);
                    tracing::warn!(
                        name = qname,
                        "dns: learned addresses keep expiring before the answer can be released (map writes slower than the TTL floor), answering SERVFAIL"
                    );
                    self.report(query, i, qname, judge::Why::MapWrite, Action::LearnFailed, client);
                    return self.servfail(query);
                }
                Stats::inc(&self.stats.relearned);
                match self.learn(service, &qname, &addrs, life.max(floor) + answer::RELEASE_SLACK).await {
                    Ok(u) => until = u,
                    Err(e) => {
                        Stats::inc(&self.stats.learn_failures);
                        tracing::warn!(name = qname, error = %e, "dns: renewing learned addresses failed, answering SERVFAIL");
                        self.report(query, i, qname, judge::Why::MapWrite, Action::LearnFailed, client);
                        return self.servfail(query);
                    }
                }
            }
        }
        let out = if dropped > 0 {
            match msg.to_vec() {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(name = qname0, error = %e, "dns: cannot re-encode filtered answer");
                    return self.servfail(query);
                }
            }
        } else {
            resp
        };
        Stats::inc(&self.stats.answered);
        out
    }

    /// `DnsPolicy::learn`: inline when the policy can do it without waiting (the common case),
    /// else on the blocking pool, bounded by the overall answer budget. Returns the expiry.
    async fn learn(
        &self,
        service: enforcer_common::ServiceId,
        qname: &str,
        addrs: &[std::net::IpAddr],
        life: Duration,
    ) -> Result<Instant, String> {
        if let Some(r) = self.policy.try_learn(service, qname, addrs, life) {
            return r;
        }
        let policy = self.policy.clone();
        let name = qname.to_owned();
        let addrs = addrs.to_vec();
        let task = tokio::task::spawn_blocking(move || policy.learn(service, &name, &addrs, life));
        let budget =
            self.cfg.timeout.saturating_mul(u32::try_from(self.cfg.upstreams.len().max(1)).unwrap_or(u32::MAX));
        match tokio::time::timeout(budget, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(join)) => Err(format!("learn panicked: {join}")),
            Err(_) => Err(format!("learn did not return within {budget:?}")),
        }
    }

    /// Info log for a name outside the registry, at most once per name per LOG_INTERVAL.
    fn log_unknown(&self, r: &Refusal) {
        let now = Instant::now();
        {
            let Ok(mut seen) = self.log_limiter.lock() else {
                return;
            };
            if let Some(t) = seen.get(&r.queried)
                && now.duration_since(*t) < LOG_INTERVAL
            {
                return;
            }
            if seen.len() >= LOG_LIMITER_MAX {
                seen.retain(|_, t| now.duration_since(*t) < LOG_INTERVAL);
                if seen.len() >= LOG_LIMITER_MAX {
                    seen.clear();
                }
            }
            seen.insert(r.queried.clone(), now);
        }
        tracing::info!(
            name = r.name,
            queried = r.queried,
            qtype = r.qtype,
            action = r.action.label(),
            "dns: name not in the registry"
        );
    }
}
