//! turnout's own process lifecycle: how a router process gets its listening sockets and
//! hands them on, so that reloading, upgrading or restarting turnout never refuses or
//! resets a client connection.
//!
//! - [`handover`]: a running router starts its successor and passes it the listening
//!   sockets (and the state directory's lock) over a Unix socket with `SCM_RIGHTS`, the
//!   way HAProxy (`-x`, `expose-fd listeners`) and Pingora (`transfer_fd`) do. The
//!   sockets are never closed or bound again, so nothing queued on them is lost.
//! - [`systemd`]: socket activation (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) and
//!   `sd_notify` (`READY=1`, `RELOADING=1`, `STOPPING=1`, `MAINPID=`).
//! - [`Inherited`]: listening sockets a process was given, found again by name or by
//!   address.

pub mod handover;
pub mod memory;
pub mod systemd;

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;

/// The names of the sockets a router listens on; also the names systemd socket units
/// give them (`FileDescriptorName=`) and the names a handover passes them under.
pub mod names {
    /// `[listen] addr`.
    pub const DATA: &str = "data";
    /// `[listen.tls] addr`.
    pub const TLS: &str = "tls";
    /// `[admin] addr`.
    pub const ADMIN: &str = "admin";
    /// `[preview] addr`.
    pub const PREVIEW: &str = "preview";
    /// The embedded state directory's lock file (handover only).
    pub const STATE_LOCK: &str = "state-lock";
}

/// File descriptors a process was given at start (by systemd or by the router it takes
/// over from), each with a name. Taken one by one; what is never taken is closed on drop.
#[derive(Debug, Default)]
pub struct Inherited {
    fds: Vec<(String, OwnedFd)>,
    /// Where they came from, for messages: "systemd" or "the previous router (pid N)".
    from: String,
}

impl Inherited {
    /// A set of named descriptors from `from`.
    pub fn new(from: impl Into<String>, fds: Vec<(String, OwnedFd)>) -> Inherited {
        Inherited {
            fds,
            from: from.into(),
        }
    }

    /// Where the descriptors came from.
    pub fn from(&self) -> &str {
        &self.from
    }

    /// Whether none is left.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Takes the descriptor called `name`.
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        let i = self.fds.iter().position(|(n, _)| n == name)?;
        Some(self.fds.remove(i).1)
    }

    /// Takes the listening TCP socket for `want` (a configured address, port 0 meaning
    /// any): the one called `name` if there is one, else one bound to that address (so
    /// that a systemd socket unit needs no `FileDescriptorName=`). `None` when there is
    /// neither: the caller binds the address itself. `Err` when the socket called `name`
    /// is not a TCP listener on that address: the configuration and the sockets given
    /// disagree, and the operator has to say which is right.
    pub fn take_listener(
        &mut self,
        name: &str,
        want: SocketAddr,
    ) -> Result<Option<TcpListener>, InheritError> {
        let by_name = self.fds.iter().position(|(n, _)| n == name);
        let by_addr = || {
            self.fds.iter().position(|(n, fd)| {
                !is_known_name(n) && local_addr(fd).is_some_and(|a| addr_matches(want, a))
            })
        };
        let Some(i) = by_name.or_else(by_addr) else {
            return Ok(None);
        };
        let (n, fd) = self.fds.remove(i);
        let Some(addr) = local_addr(&fd) else {
            return Err(InheritError::NotTcp {
                name: n,
                from: self.from.clone(),
            });
        };
        if !addr_matches(want, addr) {
            // An address that changed in the configuration (a reload): the caller binds
            // the new one, and this socket is closed here (the previous process drains
            // its own connections).
            tracing::info!(name = %n, was = %addr, now = %want, "the {n} address changed from {addr} to {want}; listening on the new one");
            return Ok(None);
        }
        let listener = TcpListener::from(fd);
        listener
            .set_nonblocking(true)
            .map_err(|source| InheritError::Io {
                name: n.clone(),
                source,
            })?;
        Ok(Some(listener))
    }

    /// The names of the descriptors not taken, for a warning.
    pub fn leftover(&self) -> Vec<String> {
        self.fds.iter().map(|(n, _)| n.clone()).collect()
    }
}

fn is_known_name(name: &str) -> bool {
    [
        names::DATA,
        names::TLS,
        names::ADMIN,
        names::PREVIEW,
        names::STATE_LOCK,
    ]
    .contains(&name)
}

/// The address a socket is bound to, if it is a TCP (IPv4 or IPv6) socket.
fn local_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    let addr = rustix::net::getsockname(fd).ok()?;
    let addr = SocketAddr::try_from(addr).ok()?;
    match rustix::net::sockopt::socket_type(fd).ok()? {
        rustix::net::SocketType::STREAM => Some(addr),
        _ => None,
    }
}

/// Whether a socket bound to `have` serves a configured address `want` (port 0: any
/// port, as tests and scripts configure it).
fn addr_matches(want: SocketAddr, have: SocketAddr) -> bool {
    want.ip() == have.ip() && (want.port() == 0 || want.port() == have.port())
}

/// Why an inherited socket cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    /// The socket given under a listener's name is not a TCP socket.
    #[error("the socket called {name:?} that {from} passed is not a TCP listening socket; check the socket unit (ListenStream=HOST:PORT)")]
    NotTcp {
        /// Its name.
        name: String,
        /// Where it came from.
        from: String,
    },
    /// The socket could not be set up.
    #[error("cannot use the inherited {name} socket: {source}")]
    Io {
        /// Its name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(addr: &str) -> OwnedFd {
        OwnedFd::from(std::net::TcpListener::bind(addr).expect("bind on loopback"))
    }

    #[test]
    fn listeners_are_found_by_name_then_by_address() {
        let data = listener("127.0.0.1:0");
        let data_addr = local_addr(&data).expect("tcp");
        let other = listener("127.0.0.1:0");
        let other_addr = local_addr(&other).expect("tcp");
        let mut set = Inherited::new(
            "test",
            vec![("turnout.socket".into(), other), (names::DATA.into(), data)],
        );
        // By name, with a configured port 0.
        let got = set
            .take_listener(names::DATA, "127.0.0.1:0".parse().expect("addr"))
            .expect("usable")
            .expect("found");
        assert_eq!(got.local_addr().expect("addr"), data_addr);
        // By address: an unnamed socket (systemd's default name is the unit's).
        let got = set
            .take_listener(names::ADMIN, other_addr)
            .expect("usable")
            .expect("found");
        assert_eq!(got.local_addr().expect("addr"), other_addr);
        assert!(set.is_empty());
        // Nothing for an address no socket has: the caller binds it.
        assert!(set
            .take_listener(names::TLS, "127.0.0.1:1".parse().expect("addr"))
            .expect("usable")
            .is_none());
    }

    #[test]
    fn a_changed_address_is_not_taken() {
        let data = listener("127.0.0.1:0");
        let mut set = Inherited::new("test", vec![(names::DATA.into(), data)]);
        let got = set
            .take_listener(names::DATA, "127.0.0.2:0".parse().expect("addr"))
            .expect("usable");
        assert!(
            got.is_none(),
            "a socket on another address is not the configured one"
        );
        assert!(set.is_empty(), "and it is closed, not left over");
    }

    #[test]
    fn a_named_socket_that_is_not_tcp_is_an_error() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let mut set = Inherited::new("systemd", vec![(names::DATA.into(), OwnedFd::from(a))]);
        let err = set
            .take_listener(names::DATA, "127.0.0.1:0".parse().expect("addr"))
            .expect_err("a unix socket is no TCP listener");
        assert!(err.to_string().contains("ListenStream"), "{err}");
    }
}
