//! Process memory housekeeping.

/// Returns freed heap pages to the OS. glibc keeps what a burst allocated (a batch of
/// thousands of messages, a spike of retained-state publishes) in its arenas for reuse,
/// and the resident size stays at the high-water mark; `malloc_trim` releases the free
/// pages of every arena. A no-op elsewhere.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only inspects and unmaps free chunks of glibc's own arenas; it
    // takes the arena locks itself and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
