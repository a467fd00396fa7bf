//! A stable 64-bit digest (FNV-1a), the same on every machine and in every process, for
//! parameter and trace digests. Not for security.

#[derive(Clone, Copy, Debug)]
pub struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Digest(0xcbf2_9ce4_8422_2325)
    }
}

impl Digest {
    pub fn new() -> Digest {
        Digest::default()
    }

    pub fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Folds in a whole word at once: cheaper than byte by byte, for traces of millions of
    /// messages.
    pub fn u64(&mut self, value: u64) {
        self.0 = mix64(self.0 ^ value);
    }

    pub fn f32s(&mut self, values: &[f32]) {
        for v in values {
            self.u64(v.to_bits() as u64);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// Digest of a parameter vector, bit for bit.
pub fn params_digest(params: &[f32]) -> u64 {
    let mut d = Digest::new();
    d.f32s(params);
    d.finish()
}

/// A 64-bit mix (SplitMix64's finaliser): a cheap, portable hash of a counter.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
