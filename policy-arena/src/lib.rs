//! A global allocator for **stateless** policy plugins, which allocate only during a call: the
//! host copies the view's columns in (through `cabi_realloc`), the policy works, the answer is
//! copied out and freed in post-return. Every allocation is then a pointer bump, a free of the
//! newest block moves the pointer back, and when no block is live the whole arena starts over,
//! so a call never pays for a general-purpose allocator's bookkeeping (dlmalloc's took about a
//! third of the lru plugin's time at 100 entries).
//!
//! Not for stateful plugins: memory still held between calls keeps the arena from starting
//! over, and freed blocks other than the newest are only reclaimed then. A plugin that leaks
//! grows until the host's memory cap, traps, and gets a fresh instance (the host's usual
//! containment), so a mistake costs speed, not correctness.
#![no_std]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

const PAGE: usize = 64 * 1024;

struct State {
    /// Where the arena begins (the end of memory when it was first used).
    start: usize,
    /// The next free byte, and the end of the memory grown so far.
    next: usize,
    end: usize,
    /// Blocks allocated and not yet freed.
    live: usize,
}

/// The allocator: `#[global_allocator] static ALLOC: CallArena = CallArena::new();`.
pub struct CallArena {
    state: UnsafeCell<State>,
}

// SAFETY: a core wasm module has one thread, so the state is never touched by two at once (the
// crate's native tests run single-threaded for the same reason).
unsafe impl Sync for CallArena {}

impl core::fmt::Debug for CallArena {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CallArena").finish_non_exhaustive()
    }
}

impl CallArena {
    pub const fn new() -> Self {
        CallArena { state: UnsafeCell::new(State { start: 0, next: 0, end: 0, live: 0 }) }
    }
}

impl Default for CallArena {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(target_arch = "wasm32")]
fn memory_end() -> usize {
    core::arch::wasm32::memory_size(0) * PAGE
}

/// Grows linear memory by `pages`; false when the host refuses (the memory cap).
#[cfg(target_arch = "wasm32")]
fn grow(pages: usize) -> bool {
    core::arch::wasm32::memory_grow(0, pages) != usize::MAX
}

// Elsewhere (the crate's own tests on the build machine) an arena in a static buffer.
#[cfg(not(target_arch = "wasm32"))]
mod host_memory {
    pub static mut MEMORY: [u64; 1 << 16] = [0; 1 << 16];
    pub static mut GROWN: usize = 0;
}

#[cfg(not(target_arch = "wasm32"))]
fn memory_end() -> usize {
    // SAFETY: single-threaded tests only; the address is taken, not a reference.
    unsafe { core::ptr::addr_of!(host_memory::MEMORY) as usize + host_memory::GROWN }
}

#[cfg(not(target_arch = "wasm32"))]
fn grow(pages: usize) -> bool {
    // SAFETY: as above.
    unsafe {
        let size = core::mem::size_of_val(&*core::ptr::addr_of!(host_memory::MEMORY));
        if host_memory::GROWN + pages * PAGE > size {
            return false;
        }
        host_memory::GROWN += pages * PAGE;
        true
    }
}

impl State {
    /// Room for `layout` at the bump pointer, growing memory when needed.
    fn bump(&mut self, layout: Layout) -> *mut u8 {
        if self.end == 0 {
            self.start = memory_end();
            self.next = self.start;
            self.end = self.start;
        }
        let addr = (self.next + layout.align() - 1) & !(layout.align() - 1);
        if !self.reach(addr.checked_add(layout.size())) {
            return core::ptr::null_mut();
        }
        self.live += 1;
        addr as *mut u8
    }

    /// Moves the bump pointer to `top`, growing memory up to it first; false (nothing moved)
    /// when `top` overflowed or the host refuses to grow.
    fn reach(&mut self, top: Option<usize>) -> bool {
        let Some(top) = top else { return false };
        if top > self.end {
            let pages = (top - self.end).div_ceil(PAGE);
            if !grow(pages) {
                return false;
            }
            self.end += pages * PAGE;
        }
        self.next = top;
        true
    }
}

// SAFETY: blocks never overlap (each is carved past the previous one's end, and the pointer only
// moves back over blocks that were freed, or over everything when nothing is live), are aligned
// as asked, and a failure is a null pointer.
unsafe impl GlobalAlloc for CallArena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: one thread, and no reference to the state outlives this call.
        unsafe { (*self.state.get()).bump(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        let s = unsafe { &mut *self.state.get() };
        s.live -= 1;
        if s.live == 0 {
            s.next = s.start;
        } else if ptr as usize + layout.size() == s.next {
            s.next = ptr as usize;
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let s = unsafe { &mut *self.state.get() };
        let at = ptr as usize;
        if at + layout.size() == s.next {
            // The newest block grows or shrinks in place.
            return if s.reach(at.checked_add(new_size)) { ptr } else { core::ptr::null_mut() };
        }
        if new_size <= layout.size() {
            return ptr;
        }
        // SAFETY: `new_size` is valid for `layout.align()` as GlobalAlloc::realloc promises.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = s.bump(new_layout);
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct, and at least `layout.size()` long.
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size()) };
            s.live -= 1;
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arena_starts_over_when_nothing_is_live_and_reuses_the_newest_block() {
        let arena = CallArena::new();
        let l = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: every pointer passed back was returned by this arena with the layout given.
        unsafe {
            let a = arena.alloc(l);
            let b = arena.alloc(l);
            assert!(b as usize >= a as usize + 100 && (b as usize).is_multiple_of(8));
            // The newest block grows in place; an older one moves and keeps its bytes.
            a.write(7);
            assert_eq!(arena.realloc(b, l, 5000), b);
            let a2 = arena.realloc(a, l, 300);
            assert_ne!(a2, a);
            assert_eq!(a2.read(), 7);
            arena.dealloc(b, Layout::from_size_align(5000, 8).unwrap());
            arena.dealloc(a2, Layout::from_size_align(300, 8).unwrap());
            // Nothing live: the next call's first block is where the first one was.
            assert_eq!(arena.alloc(l), a);
            // A request beyond the memory there is fails with null, as GlobalAlloc must.
            assert!(arena.alloc(Layout::from_size_align(1 << 30, 8).unwrap()).is_null());
        }
    }
}
