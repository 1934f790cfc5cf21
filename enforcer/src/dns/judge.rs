//! The name policy: which queries may reach the upstream, judged question by question.
//!
//! A question's name is one of:
//! - **registered**: a registry host (exact, or `*.suffix` on a label boundary) or an `--allow`
//!   host — forwarded, and its answer learned;
//! - **a search miss**: a search-domain expansion of a registered name (`api.example.com.corp.example`
//!   for a registered `api.example.com`, also with labels between the name and the search domain:
//!   `api.example.com.default.svc.cluster.local` for `cluster.local`), or the bare form of a
//!   registered expansion (`db.eu` when `db.eu.corp.example` is registered). Answered NXDOMAIN by the forwarder itself, so the
//!   resolver goes on with its search list, and nothing reaches the upstream;
//! - **unregistered**: anything else. A search-domain expansion of a multi-label unregistered
//!   name (`evil.com.corp.example`, the resolver trying `evil.com` with `search corp.example`) gets
//!   the same answer as that name and is reported under it. (An expansion the registry covers,
//!   e.g. by a wildcard `*.corp.example`, is a registry name: the query cannot tell it from the
//!   name itself, and the registry allows that name.)
//!
//! Under REGISTRY_ONLY with `--unknown-names refused` (the default) or `nxdomain`, a query with
//! any unregistered question (multi-question queries included) is answered REFUSED/NXDOMAIN
//! without asking the upstream; a search miss gets NXDOMAIN; an opcode other than QUERY gets
//! REFUSED. With `--unknown-names answer`, AUDIT and ALLOW_ANY everything is forwarded (AUDIT
//! reports what it would have refused); registered questions are learned in every mode.

use enforcer_common::ServiceId;
use hickory_proto::op::{Message, OpCode, ResponseCode};

use super::answer::name_key;
use super::{DnsPolicy, PolicyMode, UnknownNames};
use crate::config::host::strip_domain;

/// What the registry says about one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameMatch {
    pub service: ServiceId,
    /// Matched by an exact host (not a wildcard).
    pub exact: bool,
}

/// Why a name was judged unregistered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Why {
    /// Neither the registry nor an `--allow` host has it.
    NotInRegistry,
    /// A search-domain expansion of an unregistered multi-label name.
    SearchExpansion,
    /// A registered name answered with addresses the rebinding filter drops.
    Rebinding,
    /// A registered name whose learned addresses could not be written.
    MapWrite,
}

/// One question's class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Class {
    Registered(ServiceId),
    /// `report`: the name to report (for an expansion, the name before the search domain).
    Unregistered {
        report: String,
        why: Why,
    },
    SearchMiss,
}

/// Why a query was answered by the forwarder itself (the `reason` label of
/// `enforcer_dns_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    /// A (single) question outside the registry.
    NotInRegistry,
    /// A search-domain expansion of an unregistered name.
    SearchExpansion,
    /// A multi-question query with an unregistered question.
    MultiQuestion,
    /// An opcode other than QUERY (UPDATE, NOTIFY, ...).
    Opcode,
    /// A search miss (NXDOMAIN, so the resolver goes on; not a refusal of a name).
    SearchMiss,
}

impl BlockReason {
    pub fn label(self) -> &'static str {
        match self {
            BlockReason::NotInRegistry => "not_in_registry",
            BlockReason::SearchExpansion => "search_expansion",
            BlockReason::MultiQuestion => "multi_question",
            BlockReason::Opcode => "opcode",
            BlockReason::SearchMiss => "search_miss",
        }
    }
}

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Forward. `learn`: (question index, service) of the registered questions; `unregistered`:
    /// names to report (AUDIT: would refuse; `--unknown-names answer`: answered, not allowed).
    Forward { learn: Vec<(usize, ServiceId)>, unregistered: Vec<(usize, String, Why)> },
    /// Answer `rcode` without asking the upstream; `report`: (question index, name, why).
    Block { rcode: ResponseCode, reason: BlockReason, report: Vec<(usize, String, Why)> },
}

/// The class of `q` (lowercase, no trailing dot) without looking at its own search expansions.
fn classify_direct(q: &str, policy: &dyn DnsPolicy, search: &[String]) -> Class {
    // A registry name (an exact host, or one a wildcard covers: the registry allows it, whether
    // or not it is also some name plus a search domain) is forwarded.
    if let Some(NameMatch { service, .. }) = policy.match_name(q) {
        return Class::Registered(service);
    }
    // Every search domain `q` ends with, longest first: the shortest base is the name the
    // resolver was asked for.
    let mut bases: Vec<&str> = search.iter().filter_map(|s| strip_domain(q, s)).collect();
    bases.sort_by_key(|b| b.len());
    // A registered name with search-domain labels appended, directly or under the search domain
    // (`api.example.com.default.svc.cluster.local` for `cluster.local`: Kubernetes' ndots:5
    // resolvers try `<name>.<ns>.svc.cluster.local` first).
    let registered_prefix = |base: &str| {
        let mut p = base;
        loop {
            if policy.match_name(p).is_some() {
                return true;
            }
            match p.rsplit_once('.') {
                Some((head, _)) => p = head,
                None => return false,
            }
        }
    };
    if bases.iter().any(|b| registered_prefix(b)) {
        return Class::SearchMiss;
    }
    match bases.iter().find(|b| b.contains('.')) {
        Some(base) => Class::Unregistered { report: (*base).to_string(), why: Why::SearchExpansion },
        None => Class::Unregistered { report: q.to_string(), why: Why::NotInRegistry },
    }
}

/// The class of `q` (lowercase, no trailing dot) given the resolver's search list.
pub(crate) fn classify(q: &str, policy: &dyn DnsPolicy, search: &[String]) -> Class {
    match classify_direct(q, policy, search) {
        Class::Unregistered { why: Why::NotInRegistry, report } => {
            // The bare form of a registered expansion: NXDOMAIN lets the resolver go on to it.
            let mut expanded = String::with_capacity(q.len() + 32);
            for s in search {
                expanded.clear();
                expanded.push_str(q);
                expanded.push('.');
                expanded.push_str(s);
                if let Class::Registered(_) = classify_direct(&expanded, policy, search) {
                    return Class::SearchMiss;
                }
            }
            Class::Unregistered { report, why: Why::NotInRegistry }
        }
        c => c,
    }
}

/// Judge every question of `query`.
pub(crate) fn decide(query: &Message, policy: &dyn DnsPolicy, unknown: UnknownNames, search: &[String]) -> Decision {
    let mode = policy.mode();
    let blocking = mode == PolicyMode::Enforce && unknown != UnknownNames::AnswerNoAllow;
    let rcode = match unknown {
        UnknownNames::Nxdomain => ResponseCode::NXDomain,
        _ => ResponseCode::Refused,
    };
    if blocking && query.op_code() != OpCode::Query {
        return Decision::Block { rcode: ResponseCode::Refused, reason: BlockReason::Opcode, report: vec![] };
    }
    let mut learn = Vec::new();
    let mut unregistered = Vec::new();
    let mut search_miss = false;
    for (i, q) in query.queries().iter().enumerate() {
        match classify(&name_key(q.name()), policy, search) {
            Class::Registered(service) => learn.push((i, service)),
            Class::Unregistered { report, why } => unregistered.push((i, report, why)),
            Class::SearchMiss => search_miss = true,
        }
    }
    if blocking && !unregistered.is_empty() {
        let reason = if query.queries().len() > 1 {
            BlockReason::MultiQuestion
        } else if unregistered[0].2 == Why::SearchExpansion {
            BlockReason::SearchExpansion
        } else {
            BlockReason::NotInRegistry
        };
        return Decision::Block { rcode, reason, report: unregistered };
    }
    if blocking && search_miss {
        return Decision::Block { rcode: ResponseCode::NXDomain, reason: BlockReason::SearchMiss, report: vec![] };
    }
    if mode == PolicyMode::Open {
        unregistered.clear();
    }
    Decision::Forward { learn, unregistered }
}
