//! What an enforcing forwarder sends upstream: the query rebuilt from what was understood of it.
//!
//! Under REGISTRY_ONLY the upstream gets a new message with the client's header flags and
//! questions and, if the client sent one, an OPT record carrying only the options resolvers use:
//! COOKIE (RFC 7873), PADDING (RFC 7830, re-emitted as zeros of the same length) and — with
//! `--dns-forward-ecs` — CLIENT-SUBNET (RFC 7871). Records in the answer, authority and
//! additional sections of a query (TSIG/SIG(0) included), other EDNS options (NSID, EXPIRE,
//! CHAIN, unknown codes: each can carry data chosen by the workload) and bytes hickory could not
//! parse are not forwarded. The query id is replaced by a random one (the client's is put back
//! into the answer), so the upstream sees no workload-chosen bits there either.

use hickory_proto::ProtoError;
use hickory_proto::op::{Edns, Message};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};

/// The rebuilt query and how many things were left out.
#[derive(Debug)]
pub(crate) struct Sanitized {
    pub bytes: Vec<u8>,
    /// EDNS options and records not forwarded.
    pub stripped: usize,
}

/// Is this EDNS option forwarded?
pub(crate) fn keep_option(code: EdnsCode, keep_ecs: bool) -> bool {
    match code {
        EdnsCode::Cookie | EdnsCode::Padding => true,
        EdnsCode::Subnet => keep_ecs,
        _ => false,
    }
}

/// Rebuild `query` for the upstream with id `id`.
pub(crate) fn sanitize(query: &Message, keep_ecs: bool, id: u16) -> Result<Sanitized, ProtoError> {
    let mut m = Message::new();
    let mut header = *query.header();
    header.set_id(id);
    m.set_header(header);
    m.add_queries(query.queries().iter().cloned());
    let mut stripped =
        query.answers().len() + query.name_servers().len() + query.additionals().len() + query.signature().len();
    if let Some(edns) = query.extensions() {
        let mut out = Edns::new();
        out.set_max_payload(edns.max_payload());
        out.set_version(edns.version());
        out.set_dnssec_ok(edns.flags().dnssec_ok);
        for (code, opt) in edns.options().as_ref() {
            if !keep_option(*code, keep_ecs) {
                stripped += 1;
                continue;
            }
            let opt = match (code, opt) {
                (EdnsCode::Padding, EdnsOption::Unknown(c, data)) => EdnsOption::Unknown(*c, vec![0; data.len()]),
                _ => opt.clone(),
            };
            out.options_mut().insert(opt);
        }
        m.set_edns(out);
    }
    Ok(Sanitized { bytes: m.to_vec()?, stripped })
}
