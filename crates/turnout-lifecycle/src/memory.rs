//! Giving freed memory back to the system. After thousands of client connections close,
//! glibc's allocator keeps the pages they used (it returns only the top of each heap),
//! so the router's resident memory would stay at its high-water mark; `malloc_trim`
//! releases every whole free page. turnout calls it, off the request path, when many
//! connections have closed (`serve.rs`).

/// Returns the allocator's free pages to the system (glibc); does nothing elsewhere.
/// Walks the heaps: call it from a blocking thread, not a runtime worker.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer and only releases pages the allocator itself
    // holds free; glibc makes it safe to call from any thread at any time.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}
