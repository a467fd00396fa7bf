//! Payload buffers: recycled by size class, so that sending a message costs no malloc and a
//! buffer is no bigger than the power of two above the data it carries.
//!
//! A hierarchical all-reduce of 256 floats sends chunks of 32 floats inside the node and 16,
//! 8, ... 1 and 0 floats across nodes; at 100,000 GPUs about 100,000 of them are in flight at
//! once. Handing every message a buffer as long as the longest payload ever sent (what the
//! world did first) cost 1 KiB each: 100 MiB of heap, every page of it faulted in and every
//! chunk on a cache line of its own. Classes keep a 32-float payload in 128 bytes and an empty
//! one in no allocation at all.

/// Spare buffers by capacity class: class `c` holds buffers of capacity at least `2^c`.
#[derive(Default)]
pub struct BufferPool {
    classes: Vec<Vec<Vec<f32>>>,
}

/// The smallest class a buffer is allocated in: 16 floats, one cache line.
const MIN_CLASS: u32 = 4;

impl BufferPool {
    /// A buffer holding a copy of `data`: a spare one of `data`'s class, else a new one with
    /// the class's capacity. Empty data gets an empty, unallocated buffer.
    pub fn copy_of(&mut self, data: &[f32]) -> Vec<f32> {
        if data.is_empty() {
            return Vec::new();
        }
        let class = class_for_len(data.len());
        if self.classes.len() <= class {
            self.classes.resize_with(class + 1, Vec::new);
        }
        let mut buffer = self.classes[class]
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(1 << class));
        debug_assert!(buffer.is_empty() && buffer.capacity() >= data.len());
        buffer.extend_from_slice(data);
        buffer
    }

    /// Takes a buffer back for reuse. Every spare buffer was once a message's, so the pool
    /// never holds more than the most messages in flight at once.
    pub fn recycle(&mut self, mut buffer: Vec<f32>) {
        let capacity = buffer.capacity();
        if capacity == 0 {
            return;
        }
        // The largest class whose every request fits: capacity >= 2^class.
        let class = capacity.ilog2() as usize;
        if self.classes.len() <= class {
            self.classes.resize_with(class + 1, Vec::new);
        }
        buffer.clear();
        self.classes[class].push(buffer);
    }
}

/// The class a buffer for `len > 0` floats is allocated in: `2^class >= len`.
fn class_for_len(len: usize) -> usize {
    (len.next_power_of_two().trailing_zeros()).max(MIN_CLASS) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_fits_its_data_and_is_reused_within_its_class() {
        let mut pool = BufferPool::default();
        let data: Vec<f32> = (0..32).map(|i| i as f32).collect();
        let buffer = pool.copy_of(&data);
        assert_eq!(buffer, data);
        assert_eq!(buffer.capacity(), 32);
        let address = buffer.as_ptr();
        pool.recycle(buffer);
        // 17..=32 floats share the class; the recycled buffer comes back, holding only the copy.
        let again = pool.copy_of(&data[..17]);
        assert_eq!(again.as_ptr(), address);
        assert_eq!(again, &data[..17]);
        // A smaller class does not take it.
        let small = pool.copy_of(&data[..3]);
        assert_eq!(small.capacity(), 16);
        assert!(pool.copy_of(&[]).capacity() == 0);
    }

    #[test]
    fn a_foreign_buffer_is_filed_where_every_request_fits() {
        let mut pool = BufferPool::default();
        let foreign: Vec<f32> = Vec::with_capacity(100); // class 6: 64 <= 100
        let address = foreign.as_ptr();
        pool.recycle(foreign);
        let data = vec![1.0; 64];
        let reused = pool.copy_of(&data);
        assert_eq!(reused.as_ptr(), address);
        // 65 floats need class 7 and get a new buffer.
        assert_eq!(pool.copy_of(&[2.0; 65]).capacity(), 128);
    }
}
