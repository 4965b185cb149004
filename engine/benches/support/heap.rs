//! A counting global allocator for the benchmarks' peak-heap figures.
//! Counting is off until [`start`]; [`stop`] returns the peak heap above
//! the level at `start`, in bytes. It counts on top of mimalloc, the
//! allocator of the `sluice` binary, so the figures are the binary's.

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc as System;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static BASE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() && ON.load(Ordering::Relaxed) {
            let now = CURRENT.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            // A plain load first: `fetch_max` is a locked compare-and-swap
            // loop on a line every thread writes, which made the counted
            // benchmarks' allocations measurably slower than the binary's.
            if now > PEAK.load(Ordering::Relaxed) {
                PEAK.fetch_max(now, Ordering::Relaxed);
            }
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        if ON.load(Ordering::Relaxed) {
            CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
        }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Starts counting from the current level.
pub fn start() {
    ON.store(true, Ordering::Relaxed);
    let base = CURRENT.load(Ordering::Relaxed);
    BASE.store(base, Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
}

/// Stops counting; the peak above the level at [`start`], in bytes.
pub fn stop() -> usize {
    let peak = PEAK
        .load(Ordering::Relaxed)
        .saturating_sub(BASE.load(Ordering::Relaxed));
    ON.store(false, Ordering::Relaxed);
    peak
}

/// Bytes as MiB.
pub fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// CPU time used by this process so far (user + system, all threads), in
/// seconds, from `/proc/self/stat` (0 where that is not available).
#[allow(dead_code)]
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    (ticks(11) + ticks(12)) / 100.0
}
