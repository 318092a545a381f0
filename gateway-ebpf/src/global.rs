//! Globals that the programs write, or that user space writes while they run.
//!
//! Each lives in a data section of its own (`.data.*`, `.bss.*`), which the loader turns into
//! a single-entry array map, and the code reaches it by an address the verifier resolves at
//! load time (`BPF_PSEUDO_MAP_VALUE`): a read is one load, where an array map needs a lookup
//! (key on the stack, a call the verifier inlines into about eight instructions, a null
//! check) and costs the registers the call clobbers. A section's map can be pinned like any
//! other (the loader pins `.data.generation` as `GENERATION`), so other processes still
//! write it through the pinned file.

use core::cell::UnsafeCell;

/// A 64-bit word read and written with single volatile accesses.
#[repr(transparent)]
pub struct Word(UnsafeCell<u64>);

// SAFETY: the programs run on several CPUs at once, and user space may write the value while
// they run. Every access is one volatile load or store of an aligned u64, which a 64-bit
// host's JIT emits as one instruction, so a reader sees either the old or the new value; what
// a stale value costs is said where each global is declared. (A 32-bit host's JIT splits it
// in two, and a reader racing a writer could see half of each; the gateway targets 64-bit
// hosts.)
unsafe impl Sync for Word {}

impl Word {
    pub const fn new(value: u64) -> Self {
        Self(UnsafeCell::new(value))
    }

    #[inline(always)]
    pub fn get(&self) -> u64 {
        // SAFETY: the pointer comes from a live static; see the `Sync` impl for concurrency.
        unsafe { core::ptr::read_volatile(self.0.get()) }
    }

    #[inline(always)]
    pub fn set(&self, value: u64) {
        // SAFETY: as in `get`.
        unsafe { core::ptr::write_volatile(self.0.get(), value) }
    }
}
