//! A running router hands its listening sockets to its successor (`turnout upgrade`,
//! `turnout reload`).
//!
//! The old process makes an [`Offer`]: a Unix socket in the abstract namespace with a
//! random name, given to the new process in the environment variable [`ENV`]. The new
//! process ([`take_over`]) connects; the old one checks that the peer is the process it
//! started (`SO_PEERCRED`), then sends one message, [`Hello`], with the sockets attached
//! (`SCM_RIGHTS`). The new process starts, serves on them, and answers one [`Word`]:
//! ready (then the old process stops accepting and drains) or failed (then it keeps
//! serving as if nothing happened). A new process that dies or stays silent past the
//! deadline counts as failed.
//!
//! The sockets are the same kernel objects in both processes: for a moment both accept
//! on them, and a connection waiting in the queue is taken by one or the other, never
//! reset. A socket is never bound twice (`SO_REUSEPORT` would reset what was queued on
//! the socket that closes).
//!
//! Messages are one JSON object on one line each way.

use std::io::{self, IoSlice, IoSliceMut, Read as _, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::process::Child;
use std::time::{Duration, Instant};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use crate::Inherited;

/// The environment variable that tells a new `turnout serve` to take over from the
/// process that started it: the name of the old process's handover socket.
pub const ENV: &str = "TURNOUT_HANDOVER";

/// At most this many descriptors are passed (listeners and the state lock).
const MAX_FDS: usize = 8;
/// A message longer than this is not one of ours.
const MAX_MESSAGE: usize = 64 * 1024;
/// How often a wait looks at whether the new process is still alive.
const POLL: Duration = Duration::from_millis(20);

/// What the old process tells its successor along with the sockets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hello {
    /// The old process's pid.
    pub pid: u32,
    /// Its version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// `upgrade` or `reload`.
    pub reason: String,
    /// The names of the attached descriptors, in order.
    pub names: Vec<String>,
}

/// What the new process answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Word {
    /// It serves: the old process may stop accepting.
    Ready {
        /// Its pid.
        pid: u32,
        /// Its version.
        version: String,
    },
    /// It could not start; it exits.
    Failed {
        /// Why, as it would print it.
        error: String,
    },
}

/// Why a handover did not happen. In every case the old process keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The new process said why it could not start.
    #[error("the new router process could not start: {0}")]
    Refused(String),
    /// The new process exited before it took over.
    #[error("the new router process exited with {status} before it served{}", hint(.output))]
    Exited {
        /// How it ended.
        status: String,
        /// What it printed, if the caller captured it.
        output: String,
    },
    /// The new process did not answer in time.
    #[error("the new router process did not serve before the deadline; it was stopped")]
    Timeout,
    /// Something else connected, or the socket failed.
    #[error("handover socket: {0}")]
    Io(#[from] io::Error),
    /// A message that is not one of ours.
    #[error("handover: unexpected message from the other process: {0}")]
    Protocol(String),
}

fn hint(output: &str) -> String {
    if output.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", output.trim())
    }
}

/// The old process's side: a socket waiting for the successor.
pub struct Offer {
    listener: UnixListener,
    name: String,
}

impl Offer {
    /// A new handover socket, in the abstract namespace (no file to clean up, no path
    /// length to exceed), with a name no other process can guess in time to matter: and
    /// the peer is checked anyway.
    pub fn new() -> io::Result<Offer> {
        let nonce = std::collections::hash_map::RandomState::new();
        let nonce = std::hash::BuildHasher::hash_one(&nonce, Instant::now());
        let name = format!("turnout-handover-{}-{nonce:016x}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        let listener = UnixListener::bind_addr(&addr)?;
        listener.set_nonblocking(true)?;
        Ok(Offer { listener, name })
    }

    /// The value of [`ENV`] for the new process.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits (until `deadline`) for `child` to connect, then sends it `hello` with `fds`
    /// attached (`hello.names` is filled in from them). Returns the connection on which
    /// the child's [`Word`] will come.
    pub fn hand_over(
        self,
        child: &mut Child,
        mut hello: Hello,
        fds: &[(String, BorrowedFd<'_>)],
        deadline: Instant,
    ) -> Result<Successor, HandoverError> {
        let stream = loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let peer =
                        rustix::net::sockopt::socket_peercred(&stream).map_err(io::Error::from)?;
                    let peer = u32::try_from(peer.pid.as_raw_nonzero().get()).unwrap_or(0);
                    if peer == child.id() {
                        break stream;
                    }
                    tracing::warn!(peer, "a process other than the new router connected to the handover socket; ignored");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    exited(child)?;
                    if Instant::now() >= deadline {
                        return Err(timeout(child));
                    }
                    std::thread::sleep(POLL);
                }
                Err(e) => return Err(e.into()),
            }
        };
        stream.set_nonblocking(false)?;
        hello.names = fds.iter().map(|(n, _)| n.clone()).collect();
        let mut line = serde_json::to_vec(&hello).map_err(io::Error::other)?;
        line.push(b'\n');
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|(_, fd)| *fd).collect();
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if borrowed.len() > MAX_FDS || !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
            return Err(HandoverError::Protocol(format!(
                "{} descriptors are more than {MAX_FDS}",
                borrowed.len()
            )));
        }
        let sent = rustix::net::sendmsg(
            &stream,
            &[IoSlice::new(&line)],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .map_err(io::Error::from)?;
        // The descriptors went with the first byte; the rest is plain data.
        (&stream).write_all(&line[sent..])?;
        Ok(Successor {
            stream,
            buf: Vec::new(),
        })
    }
}

/// The old process's connection to its successor, on which the successor's [`Word`]
/// comes.
pub struct Successor {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Successor {
    /// Waits (until `deadline`) for the successor's word. A successor that exits or
    /// closes the connection without one has failed.
    pub fn wait(&mut self, child: &mut Child, deadline: Instant) -> Result<Word, HandoverError> {
        self.stream.set_read_timeout(Some(POLL))?;
        loop {
            if let Some(line) = take_line(&mut self.buf) {
                return serde_json::from_slice(&line)
                    .map_err(|e| HandoverError::Protocol(format!("{e}")));
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    // Closed without a word: it is exiting; say how it ended.
                    let until = Instant::now() + Duration::from_secs(5);
                    while Instant::now() < until {
                        exited(child)?;
                        std::thread::sleep(POLL);
                    }
                    return Err(HandoverError::Protocol(
                        "the new router process closed the handover socket without a word".into(),
                    ));
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if self.buf.len() > MAX_MESSAGE {
                        return Err(HandoverError::Protocol("message too long".into()));
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    exited(child)?;
                    if Instant::now() >= deadline {
                        return Err(timeout(child));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// `Err(Exited)` when `child` has exited.
fn exited(child: &mut Child) -> Result<(), HandoverError> {
    match child.try_wait()? {
        None => Ok(()),
        Some(status) => Err(HandoverError::Exited {
            status: status.to_string(),
            output: String::new(),
        }),
    }
}

/// Stops a child that missed its deadline.
fn timeout(child: &mut Child) -> HandoverError {
    let _ = child.kill();
    let _ = child.wait();
    HandoverError::Timeout
}

fn take_line(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let end = buf.iter().position(|b| *b == b'\n')?;
    let line = buf[..end].to_vec();
    buf.drain(..=end);
    Some(line)
}

/// The new process's side.
pub struct Takeover {
    stream: UnixStream,
    /// What the old process said.
    pub hello: Hello,
    /// The sockets it passed, by name.
    pub fds: Inherited,
}

/// When this process was started to take over ([`ENV`] set): connects to the old
/// process and receives its sockets. The variable is removed from the environment, so
/// that nothing this process starts sees it.
pub fn take_over() -> Result<Option<Takeover>, HandoverError> {
    let Some(name) = std::env::var_os(ENV) else {
        return Ok(None);
    };
    std::env::remove_var(ENV);
    let addr = SocketAddr::from_abstract_name(name.as_encoded_bytes())?;
    let stream = UnixStream::connect_addr(&addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    let mut data = buf[..got.bytes].to_vec();
    while !data.contains(&b'\n') {
        let mut chunk = [0u8; 4096];
        let n = (&stream).read(&mut chunk)?;
        if n == 0 || data.len() > MAX_MESSAGE {
            return Err(HandoverError::Protocol(
                "the old router process sent no hello".into(),
            ));
        }
        data.extend_from_slice(&chunk[..n]);
    }
    let line = take_line(&mut data).unwrap_or_default();
    let hello: Hello =
        serde_json::from_slice(&line).map_err(|e| HandoverError::Protocol(e.to_string()))?;
    if hello.names.len() != fds.len() {
        return Err(HandoverError::Protocol(format!(
            "{} descriptors named, {} received",
            hello.names.len(),
            fds.len()
        )));
    }
    let named = hello.names.iter().cloned().zip(fds).collect();
    let fds = Inherited::new(format!("the previous router (pid {})", hello.pid), named);
    Ok(Some(Takeover { stream, hello, fds }))
}

impl Takeover {
    /// Tells the old process this one serves.
    pub fn ready(&mut self, pid: u32, version: &str) -> io::Result<()> {
        self.say(&Word::Ready {
            pid,
            version: version.to_owned(),
        })
    }

    /// Tells the old process this one cannot start, and why.
    pub fn failed(&mut self, error: &str) -> io::Result<()> {
        self.say(&Word::Failed {
            error: error.to_owned(),
        })
    }

    fn say(&mut self, word: &Word) -> io::Result<()> {
        let mut line = serde_json::to_vec(word).map_err(io::Error::other)?;
        line.push(b'\n');
        self.stream.write_all(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd as _;

    /// The whole exchange between two threads of this process (the peer check needs
    /// the child's pid, so this process plays both, with a `true` child standing in).
    #[test]
    fn sockets_and_words_cross() {
        let offer = Offer::new().expect("offer");
        let name = offer.name().to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        // The peer check compares with the child's pid: a child that is this process
        // cannot be had, so the test checks the refusal path separately below and
        // drives the transfer itself here.
        let stream_side = std::thread::spawn(move || {
            let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
            UnixStream::connect_addr(&addr).expect("connect")
        });
        let (old_end, _) = loop {
            match offer.listener.accept() {
                Ok(a) => break a,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
                Err(e) => panic!("accept: {e}"),
            }
        };
        let new_end = stream_side.join().expect("thread");
        old_end.set_nonblocking(false).expect("blocking");
        let hello = Hello {
            pid: 1,
            version: "0.1.0".into(),
            reason: "upgrade".into(),
            names: vec!["data".into()],
        };
        let mut line = serde_json::to_vec(&hello).expect("json");
        line.push(b'\n');
        let fds = [listener.as_fd()];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            &old_end,
            &[IoSlice::new(&line)],
            &mut control,
            SendFlags::empty(),
        )
        .expect("sendmsg");

        let mut buf = vec![0u8; 1024];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &new_end,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .expect("recvmsg");
        let mut received = Vec::new();
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                received.extend(fds);
            }
        }
        assert_eq!(received.len(), 1);
        let got_hello: Hello = serde_json::from_slice(&buf[..got.bytes - 1]).expect("hello");
        assert_eq!(got_hello, hello);
        // The received socket is the same listener: a connection to it is accepted
        // through the received descriptor.
        let passed = std::net::TcpListener::from(received.remove(0));
        assert_eq!(passed.local_addr().expect("addr"), addr);
        drop(listener);
        let _client = std::net::TcpStream::connect(addr).expect("still listening");
        passed.accept().expect("accepted through the passed socket");
    }

    fn hello() -> Hello {
        Hello {
            pid: std::process::id(),
            version: "0".into(),
            reason: "upgrade".into(),
            names: Vec::new(),
        }
    }

    #[test]
    fn a_child_that_exits_before_connecting_fails_the_handover() {
        let offer = Offer::new().expect("offer");
        let mut child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .expect("sh");
        let err = offer
            .hand_over(
                &mut child,
                hello(),
                &[],
                Instant::now() + Duration::from_secs(10),
            )
            .err()
            .expect("no handover");
        assert!(
            matches!(&err, HandoverError::Exited { status, .. } if status.contains('3')),
            "{err}"
        );
    }

    #[test]
    fn a_silent_child_is_stopped_at_the_deadline() {
        let offer = Offer::new().expect("offer");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let err = offer
            .hand_over(
                &mut child,
                hello(),
                &[],
                Instant::now() + Duration::from_millis(200),
            )
            .err()
            .expect("no handover");
        assert!(matches!(err, HandoverError::Timeout), "{err}");
        assert!(
            child.try_wait().expect("wait").is_some(),
            "the child was stopped"
        );
    }
}
