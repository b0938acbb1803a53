//! DNS messages as the proxy sees them (hickory-proto does the wire format): a query must be
//! a well-formed standard query with exactly one question; an answer must be a well-formed
//! response to that very question (same id, same name, type and class). Everything else is
//! malformed: dropped and counted, never forwarded blindly and never learned from.
//!
//! What an answer opens is read here too: the A/AAAA records at the end of the CNAME chain
//! that starts at the queried name (records for other names in the message are ignored, so a
//! resolver cannot slip in addresses for names the pod never asked).

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, RecordType};

/// Longest CNAME chain followed (resolvers stop well before this).
pub const MAX_CHAIN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("not a DNS message: {0}")]
    Malformed(String),
    #[error("not a query (QR set)")]
    NotAQuery,
    #[error("opcode {0} is not a standard query")]
    NotStandardQuery(u8),
    #[error("{0} questions (exactly one is supported)")]
    QuestionCount(usize),
    #[error("not a response (QR clear)")]
    NotAResponse,
    #[error("answer id {got} does not match query id {want}")]
    IdMismatch { got: u16, want: u16 },
    #[error("answer is for {got}, not the question asked ({want})")]
    QuestionMismatch { got: String, want: String },
}

/// The one question of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    /// Lowercase, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

impl Question {
    pub fn type_name(&self) -> String {
        RecordType::from(self.qtype).to_string()
    }
}

/// Parses a query from a client.
pub fn parse_query(bytes: &[u8]) -> Result<(Message, Question), MessageError> {
    let msg = Message::from_vec(bytes).map_err(|e| MessageError::Malformed(e.to_string()))?;
    if msg.message_type() != MessageType::Query {
        return Err(MessageError::NotAQuery);
    }
    if msg.op_code() != OpCode::Query {
        return Err(MessageError::NotStandardQuery(u8::from(msg.op_code())));
    }
    let q = match msg.queries() {
        [q] => q,
        qs => return Err(MessageError::QuestionCount(qs.len())),
    };
    let question = Question {
        id: msg.id(),
        name: normalise(&q.name().to_ascii()),
        qtype: u16::from(q.query_type()),
        qclass: u16::from(q.query_class()),
    };
    Ok((msg, question))
}

/// Lowercase, without the trailing dot (the form `FqdnSelector::matches` compares).
pub fn normalise(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// What an answer says, as far as the proxy cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub rcode: u16,
    pub truncated: bool,
    /// A/AAAA at the end of the CNAME chain from the question's name, with their TTLs, in
    /// message order.
    pub addrs: Vec<(IpAddr, u32)>,
    /// The chain's names after the question's (CNAME targets), for flow records.
    pub chain: Vec<String>,
}

/// Parses a resolver's response to `question` (see the module docs).
pub fn parse_answer(bytes: &[u8], question: &Question) -> Result<(Message, Answer), MessageError> {
    let msg = Message::from_vec(bytes).map_err(|e| MessageError::Malformed(e.to_string()))?;
    if msg.message_type() != MessageType::Response {
        return Err(MessageError::NotAResponse);
    }
    if msg.id() != question.id {
        return Err(MessageError::IdMismatch { got: msg.id(), want: question.id });
    }
    let same = match msg.queries() {
        [q] => {
            normalise(&q.name().to_ascii()) == question.name
                && u16::from(q.query_type()) == question.qtype
                && u16::from(q.query_class()) == question.qclass
        }
        _ => false,
    };
    if !same {
        let got: Vec<String> = msg.queries().iter().map(|q| format!("{} {}", q.name(), q.query_type())).collect();
        return Err(MessageError::QuestionMismatch {
            got: got.join(", "),
            want: format!("{} {}", question.name, question.type_name()),
        });
    }
    let (addrs, chain) = chain_addresses(&msg, &question.name);
    let answer = Answer { rcode: u16::from(msg.response_code()), truncated: msg.truncated(), addrs, chain };
    Ok((msg, answer))
}

/// Follows CNAMEs from `qname` through the answer section (at most [`MAX_CHAIN`] hops) and
/// returns the A/AAAA records (class IN) of the name it ends at, and the chain's names.
fn chain_addresses(msg: &Message, qname: &str) -> (Vec<(IpAddr, u32)>, Vec<String>) {
    let mut current = qname.to_owned();
    let mut chain = Vec::new();
    for _ in 0..MAX_CHAIN {
        let next = msg.answers().iter().find_map(|r| match r.data() {
            RData::CNAME(c) if r.dns_class() == DNSClass::IN && normalise(&r.name().to_ascii()) == current => {
                Some(normalise(&c.0.to_ascii()))
            }
            _ => None,
        });
        match next {
            Some(n) if !chain.contains(&n) && n != qname => {
                chain.push(n.clone());
                current = n;
            }
            // A loop ends the walk where it is.
            _ => break,
        }
    }
    let addrs = msg
        .answers()
        .iter()
        .filter(|r| r.dns_class() == DNSClass::IN && normalise(&r.name().to_ascii()) == current)
        .filter_map(|r| match r.data() {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl())),
            RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl())),
            _ => None,
        })
        .collect();
    (addrs, chain)
}

/// A response carrying only `rcode` (REFUSED, SERVFAIL) to a query.
pub fn error_response(query: &Message, rcode: ResponseCode) -> Vec<u8> {
    let mut m = Message::error_msg(query.id(), query.op_code(), rcode);
    m.add_queries(query.queries().iter().cloned());
    m.set_recursion_desired(query.recursion_desired());
    m.set_recursion_available(true);
    // Encoding a message we built from parsed parts cannot fail but for sizes far past any
    // query we accept; an empty reply is then simply not sent.
    m.to_vec().unwrap_or_default()
}

/// The response with only the first `keep` addresses of the chain's end (the per-name cap):
/// what the client sees is exactly what was learned.
pub fn trim_addresses(mut msg: Message, end: &str, keep: usize) -> Option<Vec<u8>> {
    let mut kept = 0;
    let answers: Vec<_> = msg
        .take_answers()
        .into_iter()
        .filter(|r| {
            let is_addr =
                matches!(r.record_type(), RecordType::A | RecordType::AAAA) && normalise(&r.name().to_ascii()) == end;
            if !is_addr {
                return true;
            }
            kept += 1;
            kept <= keep
        })
        .collect();
    msg.insert_answers(answers);
    msg.to_vec().ok()
}

/// The rcode's mnemonic (RFC 1035/6895), as flow records show it.
pub fn rcode_name(rcode: u16) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use hickory_proto::rr::{Name, Record};

    use super::*;

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(4242).set_message_type(MessageType::Query).set_op_code(OpCode::Query);
        m.add_query(Query::query(Name::from_str(name).expect("name"), qtype));
        m.to_vec().expect("encodes")
    }

    fn answer(q: &[u8], records: Vec<Record>) -> Vec<u8> {
        let q = Message::from_vec(q).expect("query");
        let mut m = Message::new();
        m.set_id(q.id()).set_message_type(MessageType::Response).set_op_code(OpCode::Query);
        m.add_queries(q.queries().iter().cloned());
        m.insert_answers(records);
        m.to_vec().expect("encodes")
    }

    fn rec(name: &str, ttl: u32, data: RData) -> Record {
        Record::from_rdata(Name::from_str(name).expect("name"), ttl, data)
    }

    #[test]
    fn a_query_needs_one_question_and_the_standard_opcode() {
        let q = query("API.Bank.Example.", RecordType::A);
        let (_, question) = parse_query(&q).expect("valid");
        assert_eq!(question.name, "api.bank.example");
        assert_eq!(question.qtype, u16::from(RecordType::A));
        assert!(matches!(parse_query(&q[..5]), Err(MessageError::Malformed(_))));
        let mut two = Message::from_vec(&q).expect("q");
        two.add_query(Query::query(Name::from_str("b.example.").expect("n"), RecordType::A));
        assert_eq!(parse_query(&two.to_vec().expect("enc")), Err(MessageError::QuestionCount(2)));
        let resp = answer(&q, vec![]);
        assert_eq!(parse_query(&resp), Err(MessageError::NotAQuery));
    }

    #[test]
    fn the_chain_ends_where_cnames_stop_and_only_its_addresses_count() {
        let q = query("www.bank.example.", RecordType::A);
        let (_, question) = parse_query(&q).expect("valid");
        let a = |s: &str| RData::A(A(s.parse().expect("ip")));
        let bytes = answer(
            &q,
            vec![
                rec("www.bank.example.", 60, RData::CNAME(CNAME(Name::from_str("edge.cdn.example.").expect("n")))),
                rec("edge.cdn.example.", 30, RData::CNAME(CNAME(Name::from_str("api.bank.example.").expect("n")))),
                rec("api.bank.example.", 20, a("198.18.1.10")),
                rec("api.bank.example.", 20, RData::AAAA(AAAA("fd00::10".parse().expect("ip")))),
                // Not on the chain: ignored.
                rec("evil.example.", 20, a("198.18.1.66")),
            ],
        );
        let (_, ans) = parse_answer(&bytes, &question).expect("valid answer");
        assert_eq!(ans.chain, vec!["edge.cdn.example", "api.bank.example"]);
        let ips: Vec<String> = ans.addrs.iter().map(|(ip, _)| ip.to_string()).collect();
        assert_eq!(ips, vec!["198.18.1.10", "fd00::10"]);
        assert_eq!(ans.addrs[0].1, 20);
    }

    #[test]
    fn a_cname_loop_opens_nothing_and_ends() {
        let q = query("a.example.", RecordType::A);
        let (_, question) = parse_query(&q).expect("valid");
        let cname = |t: &str| RData::CNAME(CNAME(Name::from_str(t).expect("n")));
        let bytes =
            answer(&q, vec![rec("a.example.", 5, cname("b.example.")), rec("b.example.", 5, cname("a.example."))]);
        let (_, ans) = parse_answer(&bytes, &question).expect("valid");
        assert!(ans.addrs.is_empty());
    }

    #[test]
    fn answers_to_another_question_or_id_are_rejected() {
        let q = query("a.example.", RecordType::A);
        let (_, question) = parse_query(&q).expect("valid");
        let other = answer(&query("b.example.", RecordType::A), vec![]);
        assert!(matches!(parse_answer(&other, &question), Err(MessageError::QuestionMismatch { .. })));
        let mut wrong_id = Message::from_vec(&answer(&q, vec![])).expect("a");
        wrong_id.set_id(1);
        assert!(matches!(
            parse_answer(&wrong_id.to_vec().expect("enc"), &question),
            Err(MessageError::IdMismatch { .. })
        ));
        assert_eq!(parse_answer(&q, &question), Err(MessageError::NotAResponse));
    }

    #[test]
    fn error_responses_echo_the_question_and_trimming_keeps_the_first_addresses() {
        let q = query("a.example.", RecordType::A);
        let (m, question) = parse_query(&q).expect("valid");
        let refused = error_response(&m, ResponseCode::Refused);
        let (_, ans) = parse_answer(&refused, &question).expect("a response to the question");
        assert_eq!(rcode_name(ans.rcode), "REFUSED");
        let records: Vec<Record> =
            (1..=5).map(|i| rec("a.example.", 9, RData::A(A(format!("198.18.0.{i}").parse().expect("ip"))))).collect();
        let (msg, _) = parse_answer(&answer(&q, records), &question).expect("valid");
        let trimmed = trim_addresses(msg, "a.example", 2).expect("encodes");
        let (_, ans) = parse_answer(&trimmed, &question).expect("valid");
        assert_eq!(ans.addrs.len(), 2);
    }
}
