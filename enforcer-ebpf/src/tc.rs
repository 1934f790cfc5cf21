//! Per-interface traffic counters (TC, clsact or tcx): packets and L3 bytes per (cgroup, registry
//! service, direction, L4 protocol class: TCP, UDP or other). The remote address is looked up in `DESTS` (longest prefix); addresses of
//! no service count as PassthroughCluster (service 0). Ethernet-framed interfaces only.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC, helpers::generated::bpf_skb_cgroup_id, maps::lpm_trie::Key, programs::TcContext,
};
use enforcer_common::{
    DIR_EGRESS, DestKey, FAMILY_V4, FAMILY_V6, FlowOwnerKey, PROTO_OTHER, PROTO_TCP, PROTO_UDP, ServiceId, TrafficKey,
    TrafficValue,
};

use crate::maps::{DESTS, FLOW_OWNER, TRAFFIC};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// Count one packet; never changes its fate (TC_ACT_UNSPEC / TCX_NEXT: the next program decides).
#[inline(always)]
pub fn count(ctx: &TcContext, direction: u8) -> i32 {
    let _ = try_count(ctx, direction);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn try_count(ctx: &TcContext, direction: u8) -> Result<(), i64> {
    let ethertype = u16::from_be(ctx.load::<u16>(12)?);
    let mut remote = [0u8; 16];
    let (family, proto, l4, l3_len) = match ethertype {
        ETH_P_IP => {
            let vihl: u8 = ctx.load(ETH_HLEN)?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            let total = u16::from_be(ctx.load::<u16>(ETH_HLEN + 2)?);
            let proto: u8 = ctx.load(ETH_HLEN + 9)?;
            // Remote end: destination on egress, source on ingress.
            let off = if direction == DIR_EGRESS { ETH_HLEN + 16 } else { ETH_HLEN + 12 };
            let a: [u8; 4] = ctx.load(off)?;
            remote[..4].copy_from_slice(&a);
            (FAMILY_V4, proto, ETH_HLEN + ihl, u64::from(total))
        }
        ETH_P_IPV6 => {
            let payload = u16::from_be(ctx.load::<u16>(ETH_HLEN + 4)?);
            let proto: u8 = ctx.load(ETH_HLEN + 6)?;
            let off = if direction == DIR_EGRESS { ETH_HLEN + 24 } else { ETH_HLEN + 8 };
            remote = ctx.load(off)?;
            (FAMILY_V6, proto, ETH_HLEN + 40, 40 + u64::from(payload))
        }
        _ => return Ok(()),
    };
    // GSO super-packets: the IP length field of a segmented skb covers only the first segment, so
    // use the skb length (minus the Ethernet header) when it is larger.
    let skb_l3 = u64::from(ctx.len()).saturating_sub(ETH_HLEN as u64);
    let bytes = if skb_l3 > l3_len { skb_l3 } else { l3_len };

    let bits = if family == FAMILY_V4 { 32 } else { 128 };
    let service_id =
        match DESTS.get(Key::new(DestKey::prefix_len(bits), DestKey { family: u32::from(family), addr: remote })) {
            Some(v) => v.service_id,
            None => ServiceId::NONE,
        };

    let mut cgroup_id = 0u64;
    if proto == PROTO_TCP || proto == PROTO_UDP {
        let ports: [u8; 4] = ctx.load(l4)?;
        let src = u16::from_be_bytes([ports[0], ports[1]]);
        let dst = u16::from_be_bytes([ports[2], ports[3]]);
        let (remote_port, local_port) = if direction == DIR_EGRESS { (dst, src) } else { (src, dst) };
        let fk = FlowOwnerKey { remote, remote_port, local_port, proto, family, _pad: [0; 2] };
        if direction == DIR_EGRESS {
            // SAFETY: helper valid for TC programs; 0 when the skb has no local socket.
            cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
            if cgroup_id != 0 {
                // SAFETY: read-only lookup of a value owned by the map.
                let known = unsafe { FLOW_OWNER.get(fk) }.is_some_and(|c| *c == cgroup_id);
                if !known {
                    let _ = FLOW_OWNER.insert(fk, cgroup_id, 0);
                }
            }
        } else if let Some(c) = unsafe { FLOW_OWNER.get(fk) } {
            cgroup_id = *c;
        }
    }

    let class = if proto == PROTO_TCP || proto == PROTO_UDP { proto } else { PROTO_OTHER };
    let key = TrafficKey { cgroup_id, service_id, direction, family, proto: class, _pad: 0 };
    match TRAFFIC.get_ptr_mut(key) {
        // SAFETY: per-CPU value, no concurrent writer on this CPU.
        Some(v) => unsafe {
            (*v).packets += 1;
            (*v).bytes += bytes;
        },
        None => {
            let _ = TRAFFIC.insert(key, TrafficValue { packets: 1, bytes }, 0);
        }
    }
    Ok(())
}
