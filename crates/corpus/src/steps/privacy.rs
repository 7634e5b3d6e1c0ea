//! Private data scrubbing: each kind found by a pattern *and* checked the way the data itself is
//! checked (Luhn for card numbers, ISO 13616 mod-97 for IBANs, address parsing for IPs, a
//! gazetteer of given names for person names, entropy for generic secrets), then replaced with a
//! typed placeholder such as `<EMAIL>`.

use crate::step::{Step, Verdict};
use crate::Document;
use regex::{Captures, Regex};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    Secret,
    Email,
    Iban,
    CreditCard,
    Phone,
    IpAddress,
    Address,
    Name,
}

impl PiiKind {
    pub const ALL: [PiiKind; 8] = [
        PiiKind::Secret,
        PiiKind::Email,
        PiiKind::Iban,
        PiiKind::CreditCard,
        PiiKind::Phone,
        PiiKind::IpAddress,
        PiiKind::Address,
        PiiKind::Name,
    ];
    pub fn tag(self) -> &'static str {
        match self {
            PiiKind::Secret => "SECRET",
            PiiKind::Email => "EMAIL",
            PiiKind::Iban => "IBAN",
            PiiKind::CreditCard => "CREDIT_CARD",
            PiiKind::Phone => "PHONE",
            PiiKind::IpAddress => "IP_ADDRESS",
            PiiKind::Address => "ADDRESS",
            PiiKind::Name => "NAME",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PrivacyConfig {
    pub kinds: Vec<PiiKind>,
    /// Replacement template; `{KIND}` becomes the kind's tag (EMAIL, PHONE...).
    pub replacement: String,
    /// Leave loopback, private, link-local and unspecified addresses (127.0.0.1, 10.x, ::1): they
    /// identify no one and are common in code.
    pub only_public_ips: bool,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self { kinds: PiiKind::ALL.to_vec(), replacement: "<{KIND}>".into(), only_public_ips: true }
    }
}

/// Common given names (several languages). Words that are also ordinary English words
/// (Will, Grace, May, Mark, Bill, Rose, Hope...) are left out so plain text is not touched.
const GIVEN_NAMES: &str = "James John Robert Michael William David Richard Joseph Thomas Charles Christopher Daniel Matthew \
Anthony Donald Steven Paul Andrew Joshua Kenneth Kevin Brian George Timothy Ronald Edward Jason Jeffrey Ryan Jacob Gary \
Nicholas Eric Jonathan Stephen Larry Justin Scott Brandon Benjamin Samuel Gregory Alexander Patrick Raymond Jack Dennis \
Jerry Tyler Aaron Jose Adam Nathan Henry Zachary Douglas Peter Kyle Noah Ethan Jeremy Walter Christian Keith Roger \
Terry Austin Sean Gerald Carl Harold Dylan Arthur Lawrence Jordan Jesse Bryan Billy Bruce Gabriel Joe Logan Alan Juan \
Albert Willie Elijah Randy Wayne Vincent Mason Roy Ralph Bobby Russell Bradley Philip Eugene Mary Patricia Jennifer \
Linda Elizabeth Barbara Susan Jessica Sarah Karen Lisa Nancy Betty Sandra Margaret Ashley Kimberly Emily Donna \
Michelle Carol Amanda Melissa Deborah Stephanie Rebecca Laura Sharon Cynthia Kathleen Amy Angela Shirley Brenda \
Pamela Emma Nicole Helen Samantha Katherine Christine Debra Rachel Carolyn Janet Maria Catherine Heather Diane Olivia \
Julie Joyce Victoria Ruth Virginia Lauren Kelly Christina Joan Evelyn Judith Andrea Hannah Megan Cheryl Jacqueline \
Martha Madison Teresa Gloria Sara Janice Ann Kathryn Abigail Sophia Frances Jean Alice Judy Isabella Julia Beverly \
Denise Marilyn Amber Danielle Brittany Diana Natalie Sophie Charlotte Marie Kayla Alexis Lori Hans Klaus Stefan \
Wolfgang Jürgen Dieter Uwe Sven Lars Anders Nils Erik Johan Mikael Henrik Pierre Jean-Pierre François Jacques Philippe \
Nicolas Julien Antoine Mathieu Olivier Sébastien Giovanni Giuseppe Marco Luca Andrea Francesco Alessandro Matteo \
Carlos Javier Miguel Alejandro Diego Pablo Sergio Fernando Manuel Antonio Luis Jorge Ricardo Pedro Rafael Eduardo \
Ivan Dmitri Dmitry Sergei Sergey Alexei Alexey Vladimir Mikhail Nikolai Andrei Olga Natalia Anastasia Tatiana Svetlana \
Yuki Hiroshi Takeshi Kenji Akira Satoshi Wei Jing Li Ming Hao Yang Xiao Ravi Rahul Amit Sanjay Vijay Anil Priya \
Ananya Deepak Arjun Mohammed Muhammad Ahmed Ali Omar Hassan Hussein Fatima Aisha Yusuf Ibrahim Mustafa Mehmet \
Ahmet Emre Burak Jan Piotr Tomasz Krzysztof Pavel Petr Jakub Lukas Tobias Florian Felix Maximilian Moritz Jonas \
Sebastian Fabian Markus Matthias Andreas Thorsten Bernd Jens Lena Anna Laura Leonie Greta Ingrid Astrid Camille \
Chloé Manon Léa Élodie Giulia Francesca Chiara Sofia Lucia Elena Carmen Isabel Pilar Ines Joana Tiago João Rui";

/// Capitalised words that follow a given name without being a surname ("Andrew Street" is an address).
const NOT_SURNAMES: &[&str] = &[
    "The", "And", "Or", "Of", "In", "On", "At", "To", "For", "With", "Is", "Was", "Street", "Avenue", "Road",
    "Lane", "Drive", "Project", "Foundation", "University", "College", "License", "Licence", "Software", "Inc",
    "Ltd", "Corporation", "Company", "Group", "Team", "Contributors", "Developers", "Authors", "Church", "Hospital",
    "School", "Island", "River", "Bay", "Bridge", "Castle", "Center", "Centre", "Library",
];

struct Detector {
    kind: PiiKind,
    re: Regex,
    /// Cheap byte test that must hold for the pattern to possibly match (skips the regex).
    needs: fn(&str) -> bool,
}

pub struct PrivacyScrubber {
    cfg: PrivacyConfig,
    detectors: Vec<Detector>,
    counts: [AtomicU64; 8],
    docs_changed: AtomicU64,
}

fn has_digit(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_digit())
}

fn shannon_entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| {
        let p = c as f64 / n;
        -p * p.log2()
    }).sum()
}

pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0;
    for (i, b) in digits.bytes().rev().enumerate() {
        let mut d = (b - b'0') as u32;
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}

/// Issuer prefixes and lengths of the major card networks.
fn card_issuer_ok(d: &str) -> bool {
    let p2: u32 = d[..2].parse().unwrap_or(0);
    let p4: u32 = d[..4].parse().unwrap_or(0);
    let len = d.len();
    (d.starts_with('4') && matches!(len, 13 | 16 | 19))
        || ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && len == 16
        || matches!(p2, 34 | 37) && len == 15
        || (p4 == 6011 || p2 == 65) && matches!(len, 16 | 19)
        || p2 == 35 && (16..=19).contains(&len)
        || matches!(p2, 30 | 36 | 38) && len == 14
}

/// ISO 13616: country code, check digits, and mod-97 of the rearranged number equals 1.
pub fn iban_valid(s: &str) -> bool {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&s.len()) || !s.is_ascii() {
        return false;
    }
    let (head, tail) = s.split_at(4);
    let mut rem: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let v = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    rem == 1
}

fn ip_public(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v) => !(v.is_private() || v.is_loopback() || v.is_link_local() || v.is_unspecified() || v.is_broadcast() || v.is_multicast()),
        std::net::IpAddr::V6(v) => {
            let seg0 = v.segments()[0];
            !(v.is_loopback() || v.is_unspecified() || v.is_multicast() || (seg0 & 0xffc0) == 0xfe80 || (seg0 & 0xfe00) == 0xfc00)
        }
    }
}

impl PrivacyScrubber {
    pub fn new(cfg: PrivacyConfig) -> Self {
        let names: Vec<String> = GIVEN_NAMES.split_whitespace().map(regex::escape).collect();
        let mut detectors = Vec::new();
        for &kind in &cfg.kinds {
            let (pat, needs): (String, fn(&str) -> bool) = match kind {
                PiiKind::Secret => (
                    [
                        r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z]+ )*PRIVATE KEY-----",
                        r"(?-u:\b)AKIA[0-9A-Z]{16}(?-u:\b)",
                        r"(?-u:\b)gh[pousr]_[A-Za-z0-9]{36,}(?-u:\b)",
                        r"(?-u:\b)github_pat_[A-Za-z0-9_]{22,}(?-u:\b)",
                        r"(?-u:\b)xox[abposr]-[A-Za-z0-9-]{10,}",
                        r"(?-u:\b)AIza[0-9A-Za-z_\-]{35}",
                        r"(?-u:\b)[sr]k_(?:live|test)_[0-9A-Za-z]{16,}(?-u:\b)",
                        r"(?-u:\b)sk-(?:proj-)?[A-Za-z0-9_\-]{32,}",
                        r"(?-u:\b)eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
                        // key = "value" assignments: only the value (group `v`) is replaced.
                        r#"(?i)(?-u:\b)(?:api[_-]?key|secret[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret|password|passwd)(?-u:\b)["']?\s*[:=]\s*["'](?P<v>[^"'\s]{12,})["']"#,
                    ]
                    .join("|"),
                    |_| true,
                ),
                PiiKind::Email => (r"(?i)(?-u:\b)[a-z0-9][a-z0-9._%+\-]*@(?:[a-z0-9](?:[a-z0-9\-]*[a-z0-9])?\.)+[a-z]{2,}(?-u:\b)".into(), |s| s.contains('@')),
                PiiKind::Iban => (r"(?-u:\b)[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?-u:\b)".into(), has_digit),
                PiiKind::CreditCard => (r"(?-u:\b)\d(?:[ \-]?\d){12,18}(?-u:\b)".into(), has_digit),
                PiiKind::Phone => (
                    [
                        r"\+\d{1,3}[ .\-]?(?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]?\d{2,4}){1,5}(?-u:\b)",
                        r"\(\d{3}\) ?\d{3}[ .\-]\d{4}(?-u:\b)",
                        r"(?-u:\b)\d{3}[.\-]\d{3}[.\-]\d{4}(?-u:\b)",
                    ]
                    .join("|"),
                    has_digit,
                ),
                PiiKind::IpAddress => (
                    r"(?i)(?-u:\b)(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?-u:\b)|(?:[0-9a-f]{1,4}:){1,7}(?::[0-9a-f]{1,4}){1,7}|(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}|(?:[0-9a-f]{1,4}:){1,7}:"
                        .into(),
                    |s| s.contains('.') || s.contains(':'),
                ),
                PiiKind::Address => (
                    r"(?-u:\b)\d{1,5}[A-Za-z]? (?:[A-Z][a-z]+ ){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Square|Sq|Terrace|Parkway|Pkwy|Highway|Hwy|Way)(?-u:\b)\.?(?:,? (?:Apt|Suite|Unit) \w+)?(?:, [A-Z][a-z]+(?: [A-Z][a-z]+)*)?(?:, [A-Z]{2})?(?: \d{5}(?:-\d{4})?)?|(?-u:\b)[A-ZÄÖÜ][a-zäöüß]+(?:straße|strasse|weg|gasse|platz|allee) \d{1,4}[a-z]?(?-u:\b)(?:, \d{5} [A-ZÄÖÜ][a-zäöüß]+)?"
                        .into(),
                    has_digit,
                ),
                PiiKind::Name => (
                    format!(r"(?-u:\b)(?:{})(?: \p{{Lu}}\.)? (?:Mc|Mac|O')?\p{{Lu}}\p{{Ll}}+(?:-\p{{Lu}}\p{{Ll}}+)?", names.join("|")),
                    |_| true,
                ),
            };
            detectors.push(Detector { kind, re: Regex::new(&pat).expect("built-in pattern compiles"), needs });
        }
        Self { cfg, detectors, counts: Default::default(), docs_changed: 0.into() }
    }

    fn placeholder(&self, kind: PiiKind) -> String {
        self.cfg.replacement.replace("{KIND}", kind.tag())
    }

    /// Is this match really of its kind? (checksums, ranges, context)
    fn confirm(&self, kind: PiiKind, text: &str, m: &regex::Match) -> bool {
        let s = m.as_str();
        let before = text[..m.start()].chars().next_back();
        let after = text[m.end()..].chars().next();
        let glued = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        let dotted_digit = |c: Option<char>, rest: &str| c == Some('.') && rest.chars().nth(1).is_some_and(|d| d.is_ascii_digit());
        match kind {
            PiiKind::CreditCard => {
                let d: String = s.chars().filter(char::is_ascii_digit).collect();
                (13..=19).contains(&d.len()) && luhn_valid(&d) && card_issuer_ok(&d)
            }
            PiiKind::Iban => iban_valid(s),
            PiiKind::Phone => {
                let digits = s.chars().filter(char::is_ascii_digit).count();
                (8..=15).contains(&digits) && !glued(before) && !dotted_digit(after, &text[m.end()..])
            }
            PiiKind::IpAddress => {
                if glued(before) || glued(after) || before == Some('.') || dotted_digit(after, &text[m.end()..]) || before == Some(':') || after == Some(':') {
                    return false;
                }
                let lead = text[..m.start()].trim_end().to_ascii_lowercase();
                if lead.ends_with("version") || lead.ends_with("release") {
                    return false; // four-part version numbers look like IPv4 addresses
                }
                let Ok(ip) = s.parse::<std::net::IpAddr>() else { return false };
                if ip.is_ipv6() {
                    // Rust paths like `a::b` parse as IPv6; demand real address shape.
                    let groups = s.split(':').filter(|g| !g.is_empty()).count();
                    if groups < 3 || !has_digit(s) {
                        return false;
                    }
                }
                !self.cfg.only_public_ips || ip_public(ip)
            }
            PiiKind::Name => {
                let surname = s.rsplit(' ').next().unwrap_or("");
                !NOT_SURNAMES.contains(&surname)
            }
            PiiKind::Secret => true,
            PiiKind::Email | PiiKind::Address => true,
        }
    }

    /// Replace every confirmed match; returns the new text and the replacements per kind.
    pub fn scrub(&self, text: &str) -> (String, [u64; 8]) {
        let mut counts = [0u64; 8];
        let mut cur = std::borrow::Cow::Borrowed(text);
        for det in &self.detectors {
            if !(det.needs)(&cur) {
                continue;
            }
            let kind_idx = PiiKind::ALL.iter().position(|&k| k == det.kind).unwrap();
            let ph = self.placeholder(det.kind);
            let src: &str = &cur;
            let mut n = 0;
            let replaced = det.re.replace_all(src, |c: &Captures| {
                let whole = c.get(0).unwrap();
                if let Some(v) = c.name("v") {
                    if shannon_entropy(v.as_str()) < 3.0 {
                        return whole.as_str().to_string();
                    }
                    n += 1;
                    let (s, e) = (v.start() - whole.start(), v.end() - whole.start());
                    return format!("{}{}{}", &whole.as_str()[..s], ph, &whole.as_str()[e..]);
                }
                if self.confirm(det.kind, src, &whole) {
                    n += 1;
                    ph.clone()
                } else {
                    whole.as_str().to_string()
                }
            });
            if n > 0 {
                counts[kind_idx] += n;
                cur = std::borrow::Cow::Owned(replaced.into_owned());
            }
        }
        (cur.into_owned(), counts)
    }
}

impl Step for PrivacyScrubber {
    fn name(&self) -> &str {
        "privacy"
    }

    fn apply(&self, _seq: u64, doc: &mut Document) -> Verdict {
        let (text, counts) = self.scrub(&doc.text);
        let total: u64 = counts.iter().sum();
        if total > 0 {
            for (i, c) in counts.iter().enumerate() {
                self.counts[i].fetch_add(*c, Relaxed);
            }
            self.docs_changed.fetch_add(1, Relaxed);
            doc.meta.insert("pii_replaced".into(), total.into());
            doc.text = text;
        }
        Verdict::Keep
    }

    fn summary(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (i, k) in PiiKind::ALL.iter().enumerate() {
            m.insert(k.tag().to_lowercase(), self.counts[i].load(Relaxed).into());
        }
        serde_json::json!({ "replacements": m, "documents_changed": self.docs_changed.load(Relaxed) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums() {
        assert!(luhn_valid("4111111111111111"));
        assert!(!luhn_valid("4111111111111112"));
        assert!(iban_valid("GB82 WEST 1234 5698 7654 32"));
        assert!(iban_valid("DE89370400440532013000"));
        assert!(!iban_valid("DE89370400440532013001"));
    }

    #[test]
    fn scrubs_each_kind_and_leaves_code_alone() {
        let s = PrivacyScrubber::new(Default::default());
        let (t, c) = s.scrub("Andrew Gallant <jamslam@gmail.com> wrote 4111 1111 1111 1111 from 8.8.4.4, call +44 20 7946 0958.");
        assert_eq!(t, "<NAME> <<EMAIL>> wrote <CREDIT_CARD> from <IP_ADDRESS>, call <PHONE>.");
        assert_eq!(c.iter().sum::<u64>(), 5);
        let code = "use std::io::Read;\nlet v = \"1.2.3\"; let addr = \"127.0.0.1:8080\"; fn a() -> u64 { 1234567890123 }\n// See https://example.com/page and RFC 4122. Version 2.0.0.1 released 2021-03-04.\n";
        let (t, c) = s.scrub(code);
        assert_eq!(t, code, "{c:?}");
    }
}
