//! Reading `EVENTS` from the ring buffer.

use aya::maps::{MapData, RingBuf};
use enforcer_common::Event;
use tokio::io::unix::AsyncFd;

pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl EventStream {
    pub(super) fn new(rb: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the ring buffer owns its fd, which stays open for as long as the AsyncFd lives.
        let fd = unsafe { AsyncFd::register_with_interest(rb, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Wait for events and return what is ready (at least one, unless the fd fails).
    pub async fn next_batch(&mut self) -> std::io::Result<Vec<Event>> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let rb = guard.get_inner_mut();
            let mut out = Vec::new();
            while let Some(item) = rb.next() {
                if let Some(ev) = decode_event(&item) {
                    out.push(ev);
                }
            }
            guard.clear_ready();
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    /// Whatever is in the buffer now, without waiting.
    pub fn drain(&mut self) -> Vec<Event> {
        let rb = self.fd.get_mut();
        let mut out = Vec::new();
        while let Some(item) = rb.next() {
            if let Some(ev) = decode_event(&item) {
                out.push(ev);
            }
        }
        out
    }
}

/// Decode one ring-buffer record (exactly `size_of::<Event>()` bytes).
pub fn decode_event(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < core::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: Event is Pod (#[repr(C)], no padding, any bit pattern valid); the length is checked.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}
