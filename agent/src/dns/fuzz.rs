//! The invariants the DNS fuzz target (`tests/fuzz/fuzz_targets/dns.rs`) checks on any input,
//! kept here so plain `cargo test` runs them too (random and mutated messages below):
//!
//! * as a query: parsing never panics; a parsed query's REFUSED answer is a valid answer to
//!   that very question;
//! * as an answer: parsing never panics; every address it yields is an A/AAAA record of the
//!   message; learned entries come only from a question an `fqdn` rule selects, only for the
//!   addresses parsed, and only with that rule's ports. Anything else is "an allow from bytes".

use std::collections::BTreeMap;

use hickory_proto::op::ResponseCode;
use ward_common::fqdn::{LEARNED_PROTO_BITS, LearnedKey, LearnedValue};
use ward_policy::fqdn::FqdnSelector;
use ward_policy::fqdn_policy::{FqdnPolicy, FqdnRule, L4Block};

use super::learn::{Learner, Limits};
use super::message::{self, Question};

/// The only name the fuzzed policy allows, and its one port.
const ALLOWED: &str = "api.bank.example";
const PORT: u16 = 443;

fn policy() -> FqdnPolicy {
    FqdnPolicy {
        rules: vec![FqdnRule {
            selector: FqdnSelector::name(ALLOWED).unwrap_or_else(|e| panic!("fixture: {e}")),
            rule_id: 1,
            ports: Some(vec![L4Block { proto: 6, base: PORT, prefix_len: 16 }]),
        }],
        dns: vec![],
    }
}

/// Checks every invariant on one input; panics (what a fuzzer detects) when one breaks.
pub fn one_input(data: &[u8]) {
    let question = match message::parse_query(data) {
        Ok((msg, q)) => {
            let refused = message::error_response(&msg, ResponseCode::Refused);
            if !refused.is_empty() {
                let parsed = message::parse_answer(&refused, &q);
                assert!(parsed.is_ok(), "our REFUSED is not an answer to {q:?}: {parsed:?}");
            }
            q
        }
        // A fixed question for the answer half; the id from the bytes so that some inputs
        // get past the id check.
        Err(_) => Question {
            id: u16::from_be_bytes([data.first().copied().unwrap_or(0), data.get(1).copied().unwrap_or(0)]),
            name: ALLOWED.into(),
            qtype: 1,
            qclass: 1,
        },
    };
    let Ok((msg, answer)) = message::parse_answer(data, &question) else {
        return;
    };
    for (ip, ttl) in &answer.addrs {
        let present = msg.answers().iter().any(|r| {
            r.ttl() == *ttl
                && match r.data() {
                    hickory_proto::rr::RData::A(a) => std::net::IpAddr::V4(a.0) == *ip,
                    hickory_proto::rr::RData::AAAA(a) => std::net::IpAddr::V6(a.0) == *ip,
                    _ => false,
                }
        });
        assert!(present, "{ip} is not a record of the message");
    }
    let policy = policy();
    let mut kernel: BTreeMap<LearnedKey, LearnedValue> = BTreeMap::new();
    let mut learner = Learner::new(Limits::default());
    if policy.opens(&question.name) {
        let _ = learner.learn(&mut kernel, 9, &policy, &question.name, &answer.addrs, 0);
    }
    if question.name != ALLOWED {
        assert!(kernel.is_empty(), "{} opened egress", question.name);
    }
    for k in kernel.keys() {
        assert_eq!(k.prefixlen, LEARNED_PROTO_BITS + 16, "only the rule's one port");
        assert_eq!(u16::from_be_bytes(k.data.port_be), PORT);
        let ip = super::learn::ip_of(k);
        assert!(answer.addrs.iter().any(|(a, _)| a.to_canonical() == ip), "{ip} was not answered");
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::{A, CNAME};
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    use proptest::prelude::*;

    use super::*;

    fn valid_answer(qname: &str) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7).set_message_type(MessageType::Response).set_op_code(OpCode::Query);
        let name = Name::from_str(&format!("{qname}.")).unwrap_or_else(|e| panic!("{e}"));
        m.add_query(Query::query(name.clone(), RecordType::A));
        let edge = Name::from_str("edge.example.").unwrap_or_else(|e| panic!("{e}"));
        m.add_answer(Record::from_rdata(name, 30, RData::CNAME(CNAME(edge.clone()))));
        m.add_answer(Record::from_rdata(edge, 30, RData::A(A("198.18.0.1".parse().unwrap_or_else(|e| panic!("{e}"))))));
        m.to_vec().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_valid_answer_for_the_allowed_name_opens_its_one_port_only() {
        one_input(&valid_answer(ALLOWED));
        one_input(&valid_answer("tracker.ads.example"));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        #[test]
        fn random_bytes_break_no_invariant(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            one_input(&data);
        }

        #[test]
        fn mutated_answers_break_no_invariant(
            name in prop_oneof![Just(ALLOWED), Just("www.bank.example")],
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            let mut data = valid_answer(name);
            for (at, byte) in flips {
                let i = at % data.len();
                data[i] ^= byte;
            }
            one_input(&data);
        }
    }
}
