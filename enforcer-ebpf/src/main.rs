//! enforcer's kernel programs. Each program is named after its hook; the verdict logic is shared in
//! `sock_addr` (and reused by the per-packet `backstop`), the maps are all in `maps`. The list of
//! programs and maps is also `enforcer_common::{PROGRAMS, MAPS}`; a test checks they agree.
#![no_std]
#![no_main]

mod backstop;
mod maps;
mod sock_addr;
mod sock_ops;
mod tc;

use aya_ebpf::{
    macros::{cgroup_skb, cgroup_sock_addr, classifier, sock_ops},
    programs::{SkBuffContext, SockAddrContext, SockOpsContext, TcContext},
};
use enforcer_common::{DIR_EGRESS, DIR_INGRESS, HOOK_CONNECT4, HOOK_CONNECT6, HOOK_SENDMSG4, HOOK_SENDMSG6};

/// TCP connect() and UDP connect() on IPv4 sockets.
#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    sock_addr::judge(&ctx, HOOK_CONNECT4, false)
}

/// connect() on IPv6 sockets, including IPv4-mapped destinations.
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    sock_addr::judge(&ctx, HOOK_CONNECT6, true)
}

/// sendto()/sendmsg() with a destination on unconnected IPv4 UDP sockets.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr::judge(&ctx, HOOK_SENDMSG4, false)
}

/// sendto()/sendmsg() with a destination on unconnected IPv6 UDP sockets.
#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr::judge(&ctx, HOOK_SENDMSG6, true)
}

/// recvmsg() on IPv4 UDP sockets: steered DNS answers appear to come from the resolver asked.
#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr::restore_dns(&ctx, false)
}

/// recvmsg() on IPv6 UDP sockets (including IPv4-mapped).
#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr::restore_dns(&ctx, true)
}

/// getpeername() on IPv4 sockets connected to the steered resolver.
#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    if sock_addr::restore_proxy(&ctx, false) {
        return 1;
    }
    sock_addr::restore_dns(&ctx, false)
}

/// getpeername() on IPv6 sockets connected to the steered resolver.
#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    if sock_addr::restore_proxy(&ctx, true) {
        return 1;
    }
    sock_addr::restore_dns(&ctx, true)
}

/// TCP connection accounting (cgroup sock_ops): opened at ESTABLISHED, closed at CLOSE.
#[sock_ops]
pub fn sock_ops(ctx: SockOpsContext) -> u32 {
    sock_ops::handle(&ctx)
}

/// The per-packet backstop: every IPv4/IPv6 packet a socket of the cgroup sends, judged by its
/// real destination and protocol.
#[cgroup_skb(egress)]
pub fn backstop(ctx: SkBuffContext) -> i32 {
    backstop::check::<true>(&ctx)
}

/// The same backstop for kernels whose cgroup_skb programs may not read the current task (Debian's
/// 6.1 and 6.12: `bpf_get_current_pid_tgid` / `bpf_get_current_comm` are refused there). Loaded
/// only when `backstop` is refused; its events name the process recorded at connect()/sendmsg().
#[cgroup_skb(egress)]
pub fn backstop_compat(ctx: SkBuffContext) -> i32 {
    backstop::check::<false>(&ctx)
}

/// Traffic counters on an interface's egress (TC clsact / tcx).
#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    tc::count(&ctx, DIR_EGRESS)
}

/// Traffic counters on an interface's ingress (TC clsact / tcx).
#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    tc::count(&ctx, DIR_INGRESS)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
