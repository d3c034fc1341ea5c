//! How much freed memory the C allocator may keep.
//!
//! glibc's malloc serves an allocation above its mmap threshold (128 KiB at
//! first) with a private mapping and unmaps it when freed; but when such a
//! block is freed it raises the threshold to that block's size (up to
//! 32 MiB on 64-bit) and the trim threshold to twice it. After the first
//! argon2id password check (19 MiB, `auth.rs`) every later one is served
//! from the heap arena of whichever blocking thread runs it, and each arena
//! keeps up to 38 MiB of freed memory for good: a node that checked a few
//! passwords on a few threads held 60-120 MiB more than its data needs
//! (`benches/footprint.sh`). Setting the threshold once turns that
//! adjustment off, so large blocks always go back to the system.
//!
//! The cost is a mapping per allocation of 1 MiB or more (a password check,
//! a large literal or response), negligible beside what such a block is
//! used for; LMTP ingest measured the same with and without it.

/// Allocations of this size or more are mapped and unmapped one by one.
pub const MMAP_THRESHOLD: usize = 1 << 20;

/// Fix the allocator's thresholds (see the module text). Called once at the
/// start of `main`, before any thread exists; a no-op where the C library
/// is not glibc.
pub fn bound_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only changes parameters of the allocator, takes no
    // pointers, and runs before any other thread could allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}
