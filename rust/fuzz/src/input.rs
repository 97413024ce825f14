//! Reading a fuzzer's bytes as choices: every read succeeds (past the end, zeros), so
//! any input is a valid case and a longer input only makes more choices.

use novacron_engine::PAGE_SIZE;

/// A cursor over the fuzzer's bytes.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// The choices `data` makes.
    #[must_use]
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// No bytes left.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte (0 past the end).
    pub fn byte(&mut self) -> u8 {
        let (&b, rest) = self.data.split_first().unwrap_or((&0, &[]));
        self.data = rest;
        b
    }

    /// The next 2 bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// The next 4 bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// The next 8 bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    /// A choice in `0..n` (`n` > 0) from one byte, or two when `n` > 256.
    pub fn below(&mut self, n: usize) -> usize {
        let raw = if n > 256 {
            usize::from(self.u16())
        } else {
            usize::from(self.byte())
        };
        raw % n
    }

    /// A flag.
    pub fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// Up to `n` of the next bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }

    /// A length-prefixed run of bytes: a 2-byte length, then up to that many bytes.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.bytes(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    /// A page of one of the kinds guest memory holds, chosen by the input: zero, one
    /// byte repeated, `other` with a few bytes changed, text-like, a table of words
    /// growing by a step, or pseudo-random bytes from a seed. `other`: a page the case
    /// already made, if any (anything but a page's length counts as none).
    pub fn page(&mut self, other: Option<&[u8]>) -> Vec<u8> {
        let mut page = vec![0u8; PAGE_SIZE];
        match self.byte() % 7 {
            0 => {}
            1 => page.fill(self.byte()),
            2 | 3 => {
                if let Some(other) = other.filter(|o| o.len() == PAGE_SIZE) {
                    page.copy_from_slice(other);
                }
                for _ in 0..self.below(24) {
                    let at = self.below(PAGE_SIZE);
                    let len = 1 + self.below(64);
                    let value = self.byte();
                    let end = (at + len).min(PAGE_SIZE);
                    page[at..end].fill(value);
                }
            }
            4 => {
                let words = [
                    b"mov ".as_slice(),
                    b"eax, ",
                    b"0x7f",
                    b"; call ",
                    b"\n",
                    b"ret",
                ];
                let mut at = 0;
                while at < PAGE_SIZE {
                    let word = words[self.below(words.len())];
                    let n = word.len().min(PAGE_SIZE - at);
                    page[at..at + n].copy_from_slice(&word[..n]);
                    at += n;
                }
            }
            5 => {
                // words of 4 or 8 bytes growing by a step (a table: sent `filtered`)
                let (mut word, step) = (self.u64(), self.u64() >> self.below(64));
                let width = [4, 8][self.below(2)];
                for chunk in page.chunks_exact_mut(width) {
                    chunk.copy_from_slice(&word.to_le_bytes()[..width]);
                    word = word.wrapping_add(step);
                }
            }
            _ => noise(&mut (self.u64() | 1), &mut page),
        }
        page
    }
}

/// Fills `out` with xorshift64 words from `state` (not zero), which it advances:
/// reproducible bytes that no codec shrinks.
pub fn noise(state: &mut u64, out: &mut [u8]) {
    for chunk in out.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}
