//! systemd: socket activation and readiness notification, through the `sd-notify` crate.
//!
//! With `turnout.socket` (contrib/systemd), systemd owns the listening sockets and passes
//! them to each `turnout serve` it starts (`LISTEN_FDS`, checked against `LISTEN_PID`,
//! named by `LISTEN_FDNAMES`): between one router process and the next, new connections
//! wait in the kernel's queue instead of being refused.
//!
//! Notifications go to `NOTIFY_SOCKET` when systemd set it and are no-ops otherwise:
//! `READY=1` once the router serves, `RELOADING=1` with `MONOTONIC_USEC` when a reload
//! begins (`Type=notify-reload`), `STOPPING=1`, and `MAINPID=` when an upgrade or reload
//! hands the service to a new process.

use std::os::fd::{FromRawFd as _, OwnedFd};

use sd_notify::NotifyState;

use crate::Inherited;

/// The sockets systemd passed to this process, or `None` when it passed none (or they
/// were meant for another process). Call it before starting other threads: it changes
/// the environment.
///
/// Details: `None` when systemd passed none (or they
/// were meant for another process: `LISTEN_PID` is not ours). The variables are removed
/// from the environment, so that no process turnout starts takes them for its own, and
/// each socket is marked close-on-exec, so that none of them is inherited by a service
/// instance or a hook.
pub fn activation() -> std::io::Result<Option<Inherited>> {
    let fds: Vec<(i32, String)> = sd_notify::listen_fds_with_names()?.collect();
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        // Called from `serve` before the async runtime's threads exist: nothing reads
        // the environment concurrently.
        std::env::remove_var(var);
    }
    if fds.is_empty() {
        return Ok(None);
    }
    let owned = fds
        .into_iter()
        .map(|(raw, name)| {
            // SAFETY: systemd passed these descriptors to this process (`listen_fds`
            // checked `LISTEN_PID` against our pid, and they are the consecutive range
            // from 3 it announced); nothing else in the process owns them, and they are
            // taken exactly once: the variables that name them were removed above.
            #[allow(unsafe_code)]
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)
                .map_err(std::io::Error::from)?;
            Ok((name, fd))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(Some(Inherited::new("systemd", owned)))
}

/// `READY=1`, with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` with the time it began (`Type=notify-reload` needs both).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// `MAINPID=pid` and `READY=1`: the service is now the process `pid` (after an upgrade or
/// a reload), and it serves.
pub fn main_pid(pid: u32) {
    send(&[NotifyState::MainPid(pid), NotifyState::Ready]);
}

/// A status line only.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify systemd: {e}");
    }
}
