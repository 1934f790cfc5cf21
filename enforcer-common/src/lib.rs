//! Types shared by the kernel programs (`enforcer-ebpf`) and the agent (`enforcer`).
//!
//! Every type here is `#[repr(C)]` with explicit padding fields, no `bool` and no `Option`, so the
//! kernel and userspace agree byte for byte (see the layout test at the bottom). One definition per
//! map key and value. Map names are at most 15 bytes, as the kernel keeps them.
#![no_std]

pub mod event;
pub mod ids;
pub mod maps;
pub mod mode;
pub mod policy;

pub use event::*;
pub use ids::{PolicyId, ServiceId};
pub use maps::{MAPS, MapKind, MapSpec, PIN_LAYOUT_VERSION, PROGRAMS, ProgKind, ProgSpec, map_spec};
pub use mode::{Mode, UnknownMode};
pub use policy::*;

/// Names of the maps, as pinned under the daemon's bpffs directory. `enforcer-ebpf` declares each
/// with the same identifier; [`MAPS`] is the table of their shapes.
pub mod map_names {
    pub const ALLOW: &str = "ALLOW";
    pub const ALLOW_EXACT: &str = "ALLOW_EXACT";
    pub const DESTS: &str = "DESTS";
    pub const MODES: &str = "MODES";
    pub const WORKLOADS: &str = "WORKLOADS";
    pub const EVENTS: &str = "EVENTS";
    pub const EVENT_DROPS: &str = "EVENT_DROPS";
    pub const FLOWS: &str = "FLOWS";
    pub const SETTINGS: &str = "SETTINGS";
    pub const DNS_ORIG: &str = "DNS_ORIG";
    pub const TRAFFIC: &str = "TRAFFIC";
    pub const FLOW_OWNER: &str = "FLOW_OWNER";
    pub const CONNS: &str = "CONNS";
    pub const SOCK_STATE: &str = "SOCK_STATE";
    pub const PROXY_ORIG: &str = "PROXY_ORIG";
    pub const PROXY_PEERS: &str = "PROXY_PEERS";
    pub const PIN_LAYOUT: &str = "PIN_LAYOUT";
}

/// Program names (the function names in `enforcer-ebpf`), one per hook.
pub mod prog_names {
    pub const CONNECT4: &str = "connect4";
    pub const CONNECT6: &str = "connect6";
    pub const SENDMSG4: &str = "sendmsg4";
    pub const SENDMSG6: &str = "sendmsg6";
    pub const RECVMSG4: &str = "recvmsg4";
    pub const RECVMSG6: &str = "recvmsg6";
    pub const GETPEERNAME4: &str = "getpeername4";
    pub const GETPEERNAME6: &str = "getpeername6";
    /// The hooks that judge connections (always attached).
    pub const ALL: [&str; 4] = [CONNECT4, CONNECT6, SENDMSG4, SENDMSG6];
    /// The hooks that restore the resolver address on steered DNS sockets (attached with DNS
    /// steering; getpeername needs Linux 5.8).
    pub const DNS_RESTORE: [&str; 4] = [RECVMSG4, RECVMSG6, GETPEERNAME4, GETPEERNAME6];
    /// TCP connection accounting (cgroup sock_ops).
    pub const SOCK_OPS: &str = "sock_ops";
    /// Per-interface traffic counters (TC clsact / tcx).
    pub const TC_EGRESS: &str = "tc_egress";
    pub const TC_INGRESS: &str = "tc_ingress";
    /// The per-packet backstop (cgroup_skb egress, IPv4 and IPv6).
    pub const BACKSTOP: &str = "backstop";
    /// `backstop` without the task helpers, for kernels that refuse them in cgroup_skb.
    pub const BACKSTOP_COMPAT: &str = "backstop_compat";
}

#[cfg(test)]
mod layout_tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn allow_key_has_no_padding() {
        assert_eq!(size_of::<AllowKey>(), 24);
        assert_eq!(offset_of!(AllowKey, policy_id), 0);
        assert_eq!(offset_of!(AllowKey, port), 4);
        assert_eq!(offset_of!(AllowKey, proto), 6);
        assert_eq!(offset_of!(AllowKey, family), 7);
        assert_eq!(offset_of!(AllowKey, addr), 8);
        assert_eq!(AllowKey::FIXED_PREFIX_BITS, 64);
    }

    #[test]
    fn allow_value_has_no_padding() {
        assert_eq!(size_of::<AllowValue>(), 16);
        assert_eq!(offset_of!(AllowValue, service_id), 0);
        assert_eq!(offset_of!(AllowValue, flags), 4);
        assert_eq!(offset_of!(AllowValue, expires_ns), 8);
        let v = AllowValue { expires_ns: 100, ..AllowValue::new(ServiceId::NONE, 0) };
        assert!(v.live_at(99) && !v.live_at(100));
        assert!(AllowValue::new(ServiceId::NONE, 0).live_at(u64::MAX));
    }

    #[test]
    fn sock_state_has_no_padding() {
        assert_eq!(size_of::<SockState>(), 64);
        assert_eq!(offset_of!(SockState, addr), 8);
        assert_eq!(offset_of!(SockState, port), 24);
        assert_eq!(offset_of!(SockState, proto), 26);
        assert_eq!(offset_of!(SockState, family), 27);
        assert_eq!(offset_of!(SockState, verdict), 28);
        assert_eq!(offset_of!(SockState, reason), 29);
        assert_eq!(offset_of!(SockState, flags), 30);
        assert_eq!(offset_of!(SockState, hook), 31);
        assert_eq!(offset_of!(SockState, policy_id), 32);
        assert_eq!(offset_of!(SockState, service_id), 36);
        assert_eq!(offset_of!(SockState, mode), 40);
        assert_eq!(offset_of!(SockState, pid), 44);
        assert_eq!(offset_of!(SockState, comm), 48);
    }

    #[test]
    fn ported_protocols() {
        for p in [PROTO_TCP, PROTO_UDP, PROTO_UDPLITE, PROTO_SCTP, PROTO_DCCP] {
            assert!(has_ports(p), "{p}");
        }
        for p in [PROTO_ICMP, PROTO_ICMPV6, 0, 255] {
            assert!(!has_ports(p), "{p}");
        }
    }

    #[test]
    fn dest_key_has_no_padding() {
        assert_eq!(size_of::<DestKey>(), 20);
        assert_eq!(offset_of!(DestKey, family), 0);
        assert_eq!(offset_of!(DestKey, addr), 4);
        assert_eq!(DestKey::FIXED_PREFIX_BITS, 32);
    }

    #[test]
    fn workload_value_has_no_padding() {
        assert_eq!(size_of::<WorkloadValue>(), 8);
        assert_eq!(offset_of!(WorkloadValue, policy_id), 0);
        assert_eq!(offset_of!(WorkloadValue, flags), 4);
    }

    #[test]
    fn flow_key_has_no_padding() {
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(offset_of!(FlowKey, cgroup_id), 0);
        assert_eq!(offset_of!(FlowKey, policy_id), 8);
        assert_eq!(offset_of!(FlowKey, service_id), 12);
        assert_eq!(offset_of!(FlowKey, addr), 16);
        assert_eq!(offset_of!(FlowKey, port), 32);
        assert_eq!(offset_of!(FlowKey, proto), 34);
        assert_eq!(offset_of!(FlowKey, family), 35);
        assert_eq!(offset_of!(FlowKey, verdict), 36);
        assert_eq!(offset_of!(FlowKey, hook), 37);
        assert_eq!(offset_of!(FlowKey, _pad), 38);
    }

    #[test]
    fn settings_and_orig_have_no_padding() {
        assert_eq!(size_of::<Settings>(), 32);
        assert_eq!(offset_of!(Settings, local_v6), 0);
        assert_eq!(offset_of!(Settings, local_v4), 16);
        assert_eq!(offset_of!(Settings, dns_port), 20);
        assert_eq!(offset_of!(Settings, flags), 22);
        assert_eq!(offset_of!(Settings, agent_mark), 24);
        assert_eq!(offset_of!(Settings, proxy_port), 28);
        assert_eq!(size_of::<ProxyDest>(), 40);
        assert_eq!(offset_of!(ProxyDest, cgroup_id), 24);
        assert_eq!(offset_of!(ProxyDest, cookie), 32);
        assert_eq!(offset_of!(ProxyDest, port), 16);
        assert_eq!(offset_of!(ProxyDest, family), 18);
        assert_eq!(offset_of!(ProxyDest, service_id), 20);
        assert_eq!(size_of::<OrigDest>(), 24);
        assert_eq!(offset_of!(OrigDest, port), 16);
        assert_eq!(offset_of!(OrigDest, family), 18);
    }

    #[test]
    fn visibility_types_have_no_padding() {
        assert_eq!(size_of::<TrafficKey>(), 16);
        assert_eq!(offset_of!(TrafficKey, service_id), 8);
        assert_eq!(offset_of!(TrafficKey, direction), 12);
        assert_eq!(offset_of!(TrafficKey, family), 13);
        assert_eq!(offset_of!(TrafficKey, proto), 14);
        assert_eq!(size_of::<TrafficValue>(), 16);
        assert_eq!(size_of::<FlowOwnerKey>(), 24);
        assert_eq!(offset_of!(FlowOwnerKey, remote_port), 16);
        assert_eq!(offset_of!(FlowOwnerKey, local_port), 18);
        assert_eq!(offset_of!(FlowOwnerKey, proto), 20);
        assert_eq!(offset_of!(FlowOwnerKey, family), 21);
        assert_eq!(size_of::<ConnKey>(), 16);
        assert_eq!(offset_of!(ConnKey, service_id), 8);
        assert_eq!(size_of::<ConnCounters>(), 32);
    }

    #[test]
    fn event_has_no_padding() {
        assert_eq!(size_of::<Event>(), 80);
        assert_eq!(offset_of!(Event, ts_ns), 0);
        assert_eq!(offset_of!(Event, cgroup_id), 8);
        assert_eq!(offset_of!(Event, pid), 16);
        assert_eq!(offset_of!(Event, tid), 20);
        assert_eq!(offset_of!(Event, policy_id), 24);
        assert_eq!(offset_of!(Event, service_id), 28);
        assert_eq!(offset_of!(Event, comm), 32);
        assert_eq!(offset_of!(Event, addr), 48);
        assert_eq!(offset_of!(Event, port), 64);
        assert_eq!(offset_of!(Event, proto), 66);
        assert_eq!(offset_of!(Event, family), 67);
        assert_eq!(offset_of!(Event, hook), 68);
        assert_eq!(offset_of!(Event, reason), 69);
        assert_eq!(offset_of!(Event, verdict), 70);
        assert_eq!(offset_of!(Event, _pad0), 71);
        assert_eq!(offset_of!(Event, mode), 72);
        assert_eq!(offset_of!(Event, _pad1), 76);
    }

    #[test]
    fn map_table_sizes_match_the_types() {
        // The table is the single source; spot-check that it is built from the real types and that
        // every name fits the kernel's 15 bytes and is unique.
        assert_eq!(map_spec(map_names::ALLOW).map(|m| m.key_size), Some(28));
        assert_eq!(map_spec(map_names::ALLOW_EXACT).map(|m| m.key_size), Some(24));
        assert_eq!(
            map_spec(map_names::SOCK_STATE).map(|m| (m.kind, m.key_size, m.max_entries)),
            Some((MapKind::SkStorage, 4, 0))
        );
        assert_eq!(map_spec(map_names::FLOWS).map(|m| m.key_size), Some(size_of::<FlowKey>() as u32));
        for (i, m) in MAPS.iter().enumerate() {
            assert!(m.name.len() <= 15, "{} is longer than the kernel keeps", m.name);
            assert!(MAPS[i + 1..].iter().all(|o| o.name != m.name), "{} listed twice", m.name);
        }
        for (i, p) in PROGRAMS.iter().enumerate() {
            assert!(p.name.len() <= 15, "{} is longer than the kernel keeps", p.name);
            assert!(PROGRAMS[i + 1..].iter().all(|o| o.name != p.name), "{} listed twice", p.name);
        }
    }

    #[test]
    fn mode_round_trips_and_unknown_is_an_error() {
        for m in [Mode::Unset, Mode::AllowAny, Mode::RegistryOnly, Mode::Audit] {
            assert_eq!(Mode::try_from(m.raw()), Ok(m));
        }
        assert_eq!(Mode::try_from(9), Err(UnknownMode(9)));
        assert!(Mode::AllowAny.permissiveness() > Mode::Audit.permissiveness());
        assert!(Mode::Audit.permissiveness() > Mode::RegistryOnly.permissiveness());
    }

    #[test]
    fn ids_have_no_arithmetic_and_check_bounds() {
        assert_eq!(PolicyId::new(MAX_POLICIES), None);
        assert_eq!(PolicyId::new(3).map(PolicyId::get), Some(3));
        assert!(PolicyId::DEFAULT.is_default());
        assert_eq!(ServiceId::new(0), None);
        assert!(ServiceId::NONE.is_none());
        assert_eq!(size_of::<PolicyId>(), 4);
        assert_eq!(size_of::<ServiceId>(), 4);
    }

    #[test]
    fn ip6_words_round_trip() {
        let a: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        assert_eq!(ip6_bytes(ip6_words(&a)), a);
        let m = ip6_bytes(ip6_mapped_words([10, 0, 0, 1]));
        assert_eq!(v4_from_mapped(&m), Some([10, 0, 0, 1]));
    }

    #[test]
    fn v4_mapped_is_recognised() {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(v4_from_mapped(&a), Some([10, 1, 2, 3]));
        a[9] = 1;
        assert_eq!(v4_from_mapped(&a), None);
    }
}
