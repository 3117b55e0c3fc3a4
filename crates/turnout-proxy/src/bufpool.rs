//! The buffers an HTTP/1.1 exchange needs (the client's bytes, the bytes for the client,
//! the upstream's head), taken when a request starts and given back when its exchange
//! ends, so that an idle keep-alive connection holds none (nginx frees its buffers the
//! same way while a connection waits). A small pool per thread keeps a busy connection
//! from paying an allocation per request; what the pool does not keep goes back to the
//! allocator.

use std::cell::RefCell;

use bytes::BytesMut;

/// Read buffer growth step (a read takes up to this much at once).
pub(crate) const READ_CHUNK: usize = 16 * 1024;
/// What a set starts with.
const OUT_CAPACITY: usize = 8 * 1024;
const HEAD_CAPACITY: usize = 2 * 1024;
const ID_CAPACITY: usize = 64;
/// Sets kept per thread: enough for the exchanges in flight on it, not more.
const KEPT: usize = 64;
/// A buffer grown past this (a large head or a burst of pipelined requests) is not kept.
const KEEP_AT_MOST: usize = 64 * 1024;

/// One exchange's buffers.
pub(crate) struct Buffers {
    /// Bytes read from the client and not yet used.
    pub(crate) buf: BytesMut,
    /// Bytes to write to the client.
    pub(crate) out: Vec<u8>,
    /// The request head for the upstream.
    pub(crate) up_head: Vec<u8>,
    /// The request id of the request in flight.
    pub(crate) request_id: Vec<u8>,
}

thread_local! {
    static POOL: RefCell<Vec<Buffers>> = const { RefCell::new(Vec::new()) };
}

/// A set of buffers, from this thread's pool or new.
pub(crate) fn take() -> Buffers {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Buffers {
            buf: BytesMut::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(OUT_CAPACITY),
            up_head: Vec::with_capacity(HEAD_CAPACITY),
            request_id: Vec::with_capacity(ID_CAPACITY),
        })
}

/// Gives a set back: kept when the pool has room and none of them grew too large (or
/// is still shared), else freed.
pub(crate) fn give(mut b: Buffers) {
    b.buf.clear();
    b.out.clear();
    b.up_head.clear();
    b.request_id.clear();
    // `reserve` reclaims the whole allocation when nothing else holds a part of it.
    b.buf.reserve(READ_CHUNK);
    let fits = b.buf.capacity() <= KEEP_AT_MOST
        && b.out.capacity() <= KEEP_AT_MOST
        && b.up_head.capacity() <= KEEP_AT_MOST
        && b.request_id.capacity() <= KEEP_AT_MOST;
    if !fits {
        return;
    }
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < KEPT {
            pool.push(b);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_reused_and_large_ones_freed() {
        let a = take();
        let ptr = a.out.as_ptr();
        give(a);
        let b = take();
        assert_eq!(b.out.as_ptr(), ptr, "the same set comes back");
        let mut big = take();
        big.out.reserve(KEEP_AT_MOST * 2);
        let big_ptr = big.out.as_ptr();
        give(big);
        give(b);
        let c = take();
        assert_ne!(c.out.as_ptr(), big_ptr, "an oversized set is not kept");
    }
}
