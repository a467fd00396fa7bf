//! Spans: a region of the real proxy tensor together with the region of the modelled tensor it
//! stands for, split in step so that a segment of a 256-element proxy still carries its share of
//! a 16 GB gradient when there are more segments than real elements.

use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// The proxy tensor's elements, as u32 (proxies of up to 4 billion elements): spans are
    /// held at several levels of every rank's future, where 8 bytes less is paid for on
    /// every message.
    elems: Range<u32>,
    pub bytes: Range<u64>,
}

impl Span {
    pub fn new(elem_count: usize, modelled_bytes: u64) -> Span {
        Span {
            elems: 0..u32::try_from(elem_count).expect("a proxy of at most 4 billion elements"),
            bytes: 0..modelled_bytes,
        }
    }

    /// The proxy tensor's elements this span covers.
    pub fn elems(&self) -> Range<usize> {
        self.elems.start as usize..self.elems.end as usize
    }

    pub fn modelled_bytes(&self) -> u64 {
        self.bytes.end - self.bytes.start
    }

    /// Parts `first..last` of this span cut into `count` near-equal parts.
    pub fn parts(&self, count: usize, first: usize, last: usize) -> Span {
        debug_assert!(first <= last && last <= count && count > 0);
        let elem_len = (self.elems.end - self.elems.start) as u64;
        let byte_len = self.bytes.end - self.bytes.start;
        // Below `elem_len`, so within u32.
        let elem_at = |idx| self.elems.start + split_point(elem_len, count, idx) as u32;
        Span {
            elems: elem_at(first)..elem_at(last),
            bytes: self.bytes.start + split_point(byte_len, count, first)
                ..self.bytes.start + split_point(byte_len, count, last),
        }
    }

    /// Part `idx` of this span cut into `count` near-equal parts.
    pub fn part(&self, count: usize, idx: usize) -> Span {
        self.parts(count, idx, idx + 1)
    }

    /// This span less any elements at or past `elem_count` (a buffer's tail, such as the loss
    /// a reduction carries after the parameters); its modelled bytes stay.
    pub fn clipped(&self, elem_count: usize) -> Span {
        let end = u32::try_from(elem_count).unwrap_or(u32::MAX);
        Span {
            elems: self.elems.start.min(end)..self.elems.end.min(end),
            bytes: self.bytes.clone(),
        }
    }
}

/// Where part `idx` of `total` cut into `count` parts begins: `total * idx / count`, rounded
/// down. In u64 when the product fits (it always does for real sizes; a u128 division is a
/// library call on every message), else u128: the same value either way. Halving-doubling cuts
/// into a power of two parts and the hierarchical algorithm into 8 chunks, so a shift replaces
/// the 64-bit division there (exact: both round down), on four split points a message.
pub(crate) fn split_point(total: u64, count: usize, idx: usize) -> u64 {
    match total.checked_mul(idx as u64) {
        Some(product) if count.is_power_of_two() => product >> count.trailing_zeros(),
        Some(product) => product / count as u64,
        None => (total as u128 * idx as u128 / count as u128) as u64,
    }
}
