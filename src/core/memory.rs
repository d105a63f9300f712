//! How the process holds memory: the allocator tuned once at start ([`tune`]), and memory
//! given back to the system once many sessions have closed ([`trim_after_sessions_close`]).
//!
//! glibc shrinks a heap whenever its free top grows past a small threshold (128 KiB): on the
//! threads that run store calls that is an `madvise` nearly every call, and each one flushes
//! the TLB of every core (on a VM, through the hypervisor). Tuned, heaps keep their free memory
//! and lorewire hands it back itself: when the number of open sessions has fallen by
//! [`TRIM_AFTER_CLOSED`] from its peak since the last trim, and once every [`TRIM_EVERY`]
//! otherwise, the free pages of every heap are released (`malloc_trim`) on a blocking thread.
//! Does nothing on other C libraries.

use std::time::Duration;

use prometheus::IntGauge;

/// Sessions closed (from the peak since the last trim) before freed memory is handed back.
pub const TRIM_AFTER_CLOSED: i64 = 256;

/// How often the number of open sessions is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The longest free memory stays with the process.
pub const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Free memory a heap keeps at its top instead of shrinking at once.
const KEEP_FREE_TOP: i32 = 64 << 20;

/// Allocations this large or larger get their own mapping (released when freed).
const OWN_MAPPING_FROM: i32 = 4 << 20;

/// Tunes the allocator; call first thing in `main`, before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune() {
    // SAFETY: mallopt only sets the allocator's parameters.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREE_TOP);
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING_FROM);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}

/// Watches `sessions_open` (for as long as the system runs) and trims after a fall, and
/// every [`TRIM_EVERY`].
pub fn trim_after_sessions_close(sessions_open: IntGauge) {
    actix_web::rt::spawn(async move {
        let mut fall = Fall::new(sessions_open.get());
        let mut interval = actix_web::rt::time::interval(CHECK_EVERY);
        let mut last_trim = std::time::Instant::now();
        loop {
            interval.tick().await;
            if fall.observe(sessions_open.get()) || last_trim.elapsed() >= TRIM_EVERY {
                let _ = actix_web::rt::task::spawn_blocking(trim).await;
                last_trim = std::time::Instant::now();
            }
        }
    });
}

/// The peak of open sessions since the last trim, and whether a fall from it calls for one.
#[derive(Debug)]
struct Fall {
    peak: i64,
}

impl Fall {
    fn new(open: i64) -> Self {
        Fall { peak: open }
    }

    /// `true` when `open` is [`TRIM_AFTER_CLOSED`] or more below the peak: trim, and count
    /// the peak from here.
    fn observe(&mut self, open: i64) -> bool {
        self.peak = self.peak.max(open);
        if self.peak - open >= TRIM_AFTER_CLOSED {
            self.peak = open;
            return true;
        }
        false
    }
}

/// Hands the free pages of every heap back to the system; returns whether any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    let released = unsafe { libc::malloc_trim(0) } == 1;
    tracing::debug!(released, "free memory handed back to the system");
    released
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fall_from_the_peak_since_the_last_trim_calls_for_one() {
        let mut fall = Fall::new(0);
        assert!(!fall.observe(1000), "growing never trims");
        assert!(!fall.observe(1000 - TRIM_AFTER_CLOSED + 1), "a smaller fall does not");
        assert!(fall.observe(1000 - TRIM_AFTER_CLOSED), "a fall of TRIM_AFTER_CLOSED does");
        assert!(!fall.observe(1000 - TRIM_AFTER_CLOSED), "once");
        // Counted from the last trim: 744 -> 600 is not enough, a new peak of 800 -> 544 is.
        assert!(!fall.observe(600));
        assert!(!fall.observe(800));
        assert!(fall.observe(800 - TRIM_AFTER_CLOSED));
    }
}
