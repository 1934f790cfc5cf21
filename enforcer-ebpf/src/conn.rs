//! Connection accounting without socket storage: connect4/6 file an allowed TCP socket's
//! (cgroup, service) under its socket cookie in `CONN_SOCKS`; sock_ops reads it when the
//! connection is established (opened) and takes it when it closes (closed, payload bytes).
//!
//! Creating socket storage cost ~320 ns per connection here (two allocations and the socket's
//! option-memory charge), most of what accounting cost; a hash insert by cookie costs a fraction.
//! Sockets that need more than accounting (audited ones, proxied ones, UDP verdicts kept for the
//! backstop) still get `SOCK_STATE`, and sock_ops accounts those from it as before.

use aya_ebpf::{EbpfContext as _, helpers::generated::bpf_get_socket_cookie, programs::SockAddrContext};
use enforcer_common::{ConnKey, ServiceId};

use crate::maps::CONN_SOCKS;

/// File an allowed TCP connect() for accounting. False when the map refused the entry (the
/// caller then keeps the verdict in socket storage instead, so the connection is still counted).
#[inline(always)]
pub fn track(ctx: &SockAddrContext, cgroup_id: u64, service_id: ServiceId) -> bool {
    // SAFETY: helper valid for sock_addr programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    CONN_SOCKS.insert(cookie, ConnKey { cgroup_id, service_id, _pad: 0 }, 0).is_ok()
}
