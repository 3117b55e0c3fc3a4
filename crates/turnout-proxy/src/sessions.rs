//! Session affinity through a cutover (`[sessions]`).
//!
//! turnout keeps the slot a session is on in a cookie of its own, signed so that a
//! client cannot forge one: `turnout_pin=<slot>.<sig>`, where `sig` is the hex
//! HMAC-SHA256 of the slot name and the version the slot holds, under the sessions key
//! (a pin stops counting when another version is put in its slot). Every router with the same key
//! reads every other's pins, with no shared memory. The cookie is set (`Path=/;
//! HttpOnly; SameSite=Lax`, `Secure` on TLS connections, no `Max-Age`: it lasts the
//! browser session) on a response when the request carries the application's session
//! cookie, or the response sets it, and the request's pin is missing or names another
//! slot than the one that served it. Requests without either cookie are neither routed
//! nor marked by it. The `Cookie` header is forwarded as it came, pin included.
//!
//! Routing (`Table::choose_pinned`): a request with a valid pin for slot P goes to P while P has a
//! share of the traffic (a canary split is sticky per session), or while the table's
//! drain (`RoutingState::drain`, set by the control plane at a switch) is P's and its
//! window has not ended — in both cases only while P has a healthy upstream. Anything
//! else is routed as if it had no pin.
//!
//! With `[sessions]` off a request pays one `Option` check. On, the cookies are read in
//! place (no allocation); a pin costs one 32-byte comparison; the `Set-Cookie` values
//! and signatures are made when the slots' versions change.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;
use ring::hmac;
use turnout_core::SlotName;

use crate::head::ResponseHead;

/// The name of turnout's own cookie.
pub const PIN_COOKIE: &str = "turnout_pin";

/// At most this many pin cookies of one request are verified (each costs an HMAC).
const MAX_PINS: usize = 4;

/// `[sessions]` as the data plane needs it.
#[derive(Clone)]
pub struct SessionOptions {
    /// The name of the application's session cookie (`sid`, say).
    pub cookie: String,
    /// The key pins are signed with. Every router serving the same clients needs the
    /// same one ([`derive_key`] from a shared secret, or one kept in the shared store).
    pub key: [u8; 32],
}

impl std::fmt::Debug for SessionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionOptions")
            .field("cookie", &self.cookie)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The sessions key derived from a secret (`[sessions] secret`): HMAC-SHA256 of the
/// secret under a fixed label, so that the secret itself never signs anything.
pub fn derive_key(secret: &str) -> [u8; 32] {
    let label = hmac::Key::new(hmac::HMAC_SHA256, b"turnout [sessions] key");
    let tag = hmac::sign(&label, secret.as_bytes());
    let mut key = [0; 32];
    key.copy_from_slice(tag.as_ref());
    key
}

/// A new random sessions key, from the operating system's generator.
pub fn random_key() -> std::io::Result<[u8; 32]> {
    use ring::rand::SecureRandom;
    let mut key = [0; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| std::io::Error::other("the system random generator failed"))?;
    Ok(key)
}

/// `key` as 64 lowercase hex digits (how it is kept in a store).
pub fn key_to_hex(key: &[u8; 32]) -> String {
    hex(key)
}

/// A key from 64 hex digits (surrounding whitespace allowed); `None` if it is not one.
pub fn key_from_hex(text: &str) -> Option<[u8; 32]> {
    let mut key = [0; 32];
    unhex(text.trim().as_bytes(), &mut key)?;
    Some(key)
}

/// The data plane's form of [`SessionOptions`], made once.
pub(crate) struct Sessions {
    cookie: Box<[u8]>,
    key: hmac::Key,
    /// The pins of the versions the slots hold now ([`Sessions::set_versions`]).
    pins: ArcSwap<Pins>,
}

/// The pins for the versions the slots hold: a pin names the slot and is signed over the
/// slot and its version, so that it stops counting when another version is put in its
/// slot (a later deployment's candidate never gets the old version's sessions).
struct Pins {
    versions: [Option<Box<str>>; 2],
    /// Per slot: the signature.
    tags: [[u8; 32]; 2],
    /// Per slot: the `Set-Cookie` value for a plain connection, then for TLS.
    set_cookie: [[HeaderValue; 2]; 2],
}

impl Pins {
    fn new(key: &hmac::Key, versions: [Option<&str>; 2]) -> Pins {
        let tag = |slot: SlotName| {
            let mut ctx = hmac::Context::with_key(key);
            ctx.update(slot.as_str().as_bytes());
            if let Some(v) = versions[slot.index()] {
                ctx.update(b"\0");
                ctx.update(v.as_bytes());
            }
            let mut out = [0u8; 32];
            out.copy_from_slice(ctx.sign().as_ref());
            out
        };
        let tags = SlotName::ALL.map(tag);
        let value = |slot: SlotName, tls: bool| {
            let sig = hex(&tags[slot.index()]);
            let secure = if tls { "; Secure" } else { "" };
            let text = format!("{PIN_COOKIE}={slot}.{sig}; Path=/; HttpOnly; SameSite=Lax{secure}");
            // Only ASCII letters, digits and `=.;/ ` : always a valid header value.
            HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
                .unwrap_or(HeaderValue::from_static(""))
        };
        Pins {
            versions: versions.map(|v| v.map(Into::into)),
            tags,
            set_cookie: SlotName::ALL.map(|slot| [value(slot, false), value(slot, true)]),
        }
    }
}

/// What a request's cookies say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SessionFacts {
    /// The slot of a pin that verified.
    pub(crate) pin: Option<SlotName>,
    /// The application's session cookie is there (with a value).
    pub(crate) session: bool,
}

impl SessionFacts {
    /// Whether the response from `served` gets a pin: the request belongs to a session
    /// (or the response starts one) whose pin is missing or names another slot.
    pub(crate) fn wants_pin(&self, sets_session: bool, served: SlotName) -> bool {
        (self.session || sets_session) && self.pin != Some(served)
    }
}

impl Sessions {
    pub(crate) fn new(opts: &SessionOptions) -> Sessions {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &opts.key);
        let pins = ArcSwap::from_pointee(Pins::new(&key, [None, None]));
        Sessions {
            cookie: opts.cookie.as_bytes().into(),
            key,
            pins,
        }
    }

    /// The slots hold these versions now (the routing table was rebuilt): pins are made
    /// and checked for them from here on.
    pub(crate) fn set_versions(&self, versions: [Option<&str>; 2]) {
        let now = self.pins.load();
        if now.versions.iter().map(Option::as_deref).eq(versions) {
            return;
        }
        self.pins.store(Arc::new(Pins::new(&self.key, versions)));
    }

    /// Reads the `Cookie` header values of a request (several headers, as HTTP/2 splits
    /// them, or one).
    pub(crate) fn facts<'a>(&self, cookies: impl Iterator<Item = &'a [u8]>) -> SessionFacts {
        let mut facts = SessionFacts::default();
        let mut pins = 0;
        for value in cookies {
            for (name, value) in pairs(value) {
                if name == PIN_COOKIE.as_bytes() {
                    if facts.pin.is_none() && pins < MAX_PINS {
                        pins += 1;
                        facts.pin = self.verify(value);
                    }
                } else if name == &*self.cookie && !value.is_empty() {
                    facts.session = true;
                }
            }
        }
        facts
    }

    /// The slot of a pin value (`slot.sig`) whose signature is right.
    fn verify(&self, value: &[u8]) -> Option<SlotName> {
        let value = value.strip_prefix(b"\"").unwrap_or(value);
        let value = value.strip_suffix(b"\"").unwrap_or(value);
        let dot = value.iter().position(|&b| b == b'.')?;
        let slot = match &value[..dot] {
            b"blue" => SlotName::Blue,
            b"green" => SlotName::Green,
            _ => return None,
        };
        let mut tag = [0; 32];
        unhex(&value[dot + 1..], &mut tag)?;
        // Constant time: a forger learns nothing from how long a refusal took.
        let want = &self.pins.load().tags[slot.index()];
        let diff = tag.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (diff == 0).then_some(slot)
    }

    /// Whether a `Set-Cookie` value sets the application's session cookie.
    pub(crate) fn sets_session(&self, set_cookie: &[u8]) -> bool {
        let first = set_cookie.split(|&b| b == b';').next().unwrap_or_default();
        pairs(first).any(|(name, value)| name == &*self.cookie && !value.is_empty())
    }

    /// Whether a response head (either protocol's) sets the application's session
    /// cookie.
    pub(crate) fn response_sets_session(&self, resp: &impl ResponseHead) -> bool {
        resp.headers().any(|(name, value)| {
            name.eq_ignore_ascii_case(b"set-cookie") && self.sets_session(value)
        })
    }

    /// The `Set-Cookie` value that pins a session to `slot`.
    pub(crate) fn set_cookie(&self, slot: SlotName, tls: bool) -> HeaderValue {
        self.pins.load().set_cookie[slot.index()][usize::from(tls)].clone()
    }
}

/// The `name=value` pairs of a `Cookie` header value (RFC 6265 §4.2: separated by `;`,
/// whitespace around them allowed). A part with no `=` is skipped.
fn pairs(value: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    value.split(|&b| b == b';').filter_map(|part| {
        let eq = part.iter().position(|&b| b == b'=')?;
        Some((part[..eq].trim_ascii(), part[eq + 1..].trim_ascii()))
    })
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Decodes exactly `out.len()` bytes of hex digits (either case).
fn unhex(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {

    use super::*;

    fn sessions() -> Sessions {
        Sessions::new(&SessionOptions {
            cookie: "sid".into(),
            key: derive_key("test secret"),
        })
    }

    /// The pin cookie's value (`slot.sig`) for `slot`.
    fn pin(s: &Sessions, slot: SlotName) -> String {
        let v = s.set_cookie(slot, false);
        let v = v.to_str().unwrap().strip_prefix("turnout_pin=").unwrap();
        v[..v.find(';').unwrap()].to_owned()
    }

    #[test]
    fn cookies_are_read_from_every_header_and_malformed_parts_are_skipped() {
        let s = sessions();
        let blue = pin(&s, SlotName::Blue);
        let green = pin(&s, SlotName::Green);
        let blue_sig = &blue["blue.".len()..];
        let p = |slot| Some(slot);
        let cases: Vec<(Vec<String>, SessionFacts)> = vec![
            (vec![], SessionFacts::default()),
            (
                vec!["sid=abc".into()],
                SessionFacts {
                    pin: None,
                    session: true,
                },
            ),
            (
                vec![format!("a=1; sid=abc; turnout_pin={blue}")],
                SessionFacts {
                    pin: p(SlotName::Blue),
                    session: true,
                },
            ),
            // No spaces, spaces and tabs around parts, a trailing `;`.
            (
                vec![format!("turnout_pin={green};sid=x;")],
                SessionFacts {
                    pin: p(SlotName::Green),
                    session: true,
                },
            ),
            (
                vec![format!("  turnout_pin = {green} ;\tother=2 ")],
                SessionFacts {
                    pin: p(SlotName::Green),
                    session: false,
                },
            ),
            // Several Cookie headers (HTTP/2 splits them).
            (
                vec!["x=1".into(), "sid=s".into(), format!("turnout_pin={blue}")],
                SessionFacts {
                    pin: p(SlotName::Blue),
                    session: true,
                },
            ),
            // A quoted value.
            (
                vec![format!("turnout_pin=\"{blue}\"")],
                SessionFacts {
                    pin: p(SlotName::Blue),
                    session: false,
                },
            ),
            // Names are case-sensitive; prefixes are other cookies; empty values are none.
            (
                vec!["SID=a; sidx=b; xsid=c; sid=".into()],
                SessionFacts::default(),
            ),
            // Malformed: no `=`, empty parts, garbage.
            (
                vec!["sid; ;; =; turnout_pin; \u{7f}=1".into()],
                SessionFacts::default(),
            ),
            // A tampered pin: another slot with blue's signature, a cut signature, a
            // changed digit, an unknown slot, no dot.
            (
                vec![format!("turnout_pin=green.{blue_sig}; sid=a")],
                SessionFacts {
                    pin: None,
                    session: true,
                },
            ),
            (
                vec![format!("turnout_pin={}", &blue[..blue.len() - 2])],
                SessionFacts::default(),
            ),
            (
                vec![
                    format!(
                        "turnout_pin=blue.{}{}",
                        &blue_sig[..10],
                        if &blue_sig[10..11] == "0" { "1" } else { "0" }
                    ) + &blue_sig[11..],
                ],
                SessionFacts::default(),
            ),
            (
                vec![format!("turnout_pin=red.{blue_sig}")],
                SessionFacts::default(),
            ),
            (
                vec![format!("turnout_pin=blue{blue_sig}")],
                SessionFacts::default(),
            ),
            // A bad pin first, then a good one: the good one counts.
            (
                vec![format!("turnout_pin=green.{blue_sig}; turnout_pin={blue}")],
                SessionFacts {
                    pin: p(SlotName::Blue),
                    session: false,
                },
            ),
        ];
        for (headers, want) in cases {
            let got = s.facts(headers.iter().map(|h| h.as_bytes()));
            assert_eq!(got, want, "{headers:?}");
        }
    }

    #[test]
    fn pins_sign_the_slot_and_only_the_same_key_verifies_them() {
        let s = sessions();
        let blue = pin(&s, SlotName::Blue);
        assert!(blue.starts_with("blue."));
        assert_eq!(blue.len(), "blue.".len() + 64);
        assert_eq!(s.verify(blue.as_bytes()), Some(SlotName::Blue));
        assert_eq!(
            s.verify(blue.to_uppercase().replace("BLUE", "blue").as_bytes()),
            Some(SlotName::Blue)
        );
        // Deterministic: another router with the same key makes the same pin.
        assert_eq!(pin(&sessions(), SlotName::Blue), blue);
        let other = Sessions::new(&SessionOptions {
            cookie: "sid".into(),
            key: derive_key("another secret"),
        });
        assert_eq!(other.verify(blue.as_bytes()), None);
        assert_ne!(pin(&other, SlotName::Blue), blue);
    }

    #[test]
    fn a_pin_stops_counting_when_another_version_is_put_in_its_slot() {
        let s = sessions();
        s.set_versions([Some("v1"), Some("v2")]);
        let blue_v1 = pin(&s, SlotName::Blue);
        let green_v2 = pin(&s, SlotName::Green);
        assert_eq!(s.verify(blue_v1.as_bytes()), Some(SlotName::Blue));
        // A switch changes no version: both pins still hold.
        s.set_versions([Some("v1"), Some("v2")]);
        assert_eq!(s.verify(blue_v1.as_bytes()), Some(SlotName::Blue));
        // v3 goes into blue: v1's sessions are not v3's; green's pins are untouched.
        s.set_versions([Some("v3"), Some("v2")]);
        assert_eq!(s.verify(blue_v1.as_bytes()), None);
        assert_eq!(s.verify(green_v2.as_bytes()), Some(SlotName::Green));
        assert_ne!(pin(&s, SlotName::Blue), blue_v1);
    }

    #[test]
    fn set_cookie_attributes() {
        let s = sessions();
        let plain = s.set_cookie(SlotName::Green, false);
        let plain = plain.to_str().unwrap();
        assert!(plain.starts_with("turnout_pin=green."), "{plain}");
        assert!(
            plain.ends_with("; Path=/; HttpOnly; SameSite=Lax"),
            "{plain}"
        );
        let tls = s.set_cookie(SlotName::Green, true);
        let tls = tls.to_str().unwrap();
        assert_eq!(tls, format!("{plain}; Secure"));
    }

    #[test]
    fn a_response_sets_the_session_cookie() {
        let s = sessions();
        for (value, want) in [
            ("sid=abc; Path=/; HttpOnly", true),
            ("sid=abc", true),
            (" sid = abc ", true),
            ("sid=; Max-Age=0", false),
            ("other=1; sid=abc", false),
            ("SID=abc", false),
            ("sidx=abc", false),
            ("", false),
        ] {
            assert_eq!(s.sets_session(value.as_bytes()), want, "{value:?}");
        }
        let head = |lines: &str| format!("HTTP/1.1 200 OK\r\n{lines}\r\n");
        for (lines, want) in [
            ("content-length: 0\r\n", false),
            ("Set-Cookie: a=1\r\nSET-COOKIE: sid=2; Path=/\r\n", true),
            ("set-cookie:sid=2\r\n", true),
            ("x-set-cookie: sid=2\r\n", false),
            ("set-cookie: a=1; sid=2\r\n", false),
        ] {
            let head = head(lines);
            let view = crate::head::H1Response::new(head.as_bytes());
            assert_eq!(s.response_sets_session(&view), want, "{lines:?}");
        }
    }

    #[test]
    fn keys_round_trip_as_hex() {
        let key = random_key().unwrap();
        assert_ne!(key, random_key().unwrap());
        let text = key_to_hex(&key);
        assert_eq!(text.len(), 64);
        assert_eq!(key_from_hex(&format!(" {text}\n")), Some(key));
        for bad in ["", "00", &text[1..], &format!("{}g", &text[1..])] {
            assert_eq!(key_from_hex(bad), None, "{bad:?}");
        }
        assert_eq!(derive_key("s"), derive_key("s"));
        assert_ne!(derive_key("s"), derive_key("t"));
    }

    #[test]
    fn wants_pin_only_for_sessions_not_pinned_to_the_serving_slot() {
        use SlotName::{Blue, Green};
        let f = |pin, session| SessionFacts { pin, session };
        for (facts, sets, served, want) in [
            (f(None, false), false, Blue, false),
            (f(None, false), true, Blue, true),
            (f(None, true), false, Blue, true),
            (f(Some(Blue), true), false, Blue, false),
            (f(Some(Blue), true), false, Green, true),
            (f(Some(Blue), false), false, Green, false),
            (f(Some(Blue), false), true, Green, true),
        ] {
            assert_eq!(
                facts.wants_pin(sets, served),
                want,
                "{facts:?} {sets} {served}"
            );
        }
    }
}
