//! NDR 2.0 (C706 chapter 14), little-endian: primitives aligned to their
//! size, conformant arrays with their count first, unique pointers as a
//! referent id. The decoder is bounded: a length or count larger than what
//! is left is an error, never an allocation or a panic.
#![deny(clippy::indexing_slicing)]

use crate::RpcError;

#[derive(Debug, Default)]
pub struct Encoder {
    pub buf: Vec<u8>,
    next_referent: u32,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder { buf: Vec::new(), next_referent: 0x0002_0000 }
    }

    pub fn align(&mut self, n: usize) {
        while !self.buf.len().is_multiple_of(n) {
            self.buf.push(0);
        }
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u16(&mut self, v: u16) {
        self.align(2);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.align(8);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }

    /// A non-null unique pointer's referent id (its data follows where NDR defers it).
    pub fn referent(&mut self) {
        let id = self.next_referent;
        self.next_referent += 4;
        self.u32(id);
    }

    pub fn null(&mut self) {
        self.u32(0);
    }
}

#[derive(Debug)]
pub struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(data: &'a [u8]) -> Decoder<'a> {
        Decoder { data, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn short(&self, what: &str) -> RpcError {
        RpcError::Malformed(format!("NDR data (ends inside {what} at byte {})", self.pos))
    }

    pub fn align(&mut self, n: usize) -> Result<(), RpcError> {
        let pad = (n - self.pos % n) % n;
        if pad > self.remaining() {
            return Err(self.short("padding"));
        }
        self.pos += pad;
        Ok(())
    }

    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], RpcError> {
        if n > self.remaining() {
            return Err(self.short(what));
        }
        let out = self.data.get(self.pos..self.pos.saturating_add(n)).ok_or_else(|| self.short(what))?;
        self.pos += n;
        Ok(out)
    }

    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], RpcError> {
        self.take(N, what)?.try_into().map_err(|_| self.short(what))
    }

    pub fn u8(&mut self) -> Result<u8, RpcError> {
        Ok(u8::from_le_bytes(self.array("a byte")?))
    }

    pub fn u16(&mut self) -> Result<u16, RpcError> {
        self.align(2)?;
        Ok(u16::from_le_bytes(self.array("a short")?))
    }

    pub fn u32(&mut self) -> Result<u32, RpcError> {
        self.align(4)?;
        Ok(u32::from_le_bytes(self.array("a long")?))
    }

    pub fn u64(&mut self) -> Result<u64, RpcError> {
        self.align(8)?;
        let b = self.take(8, "a hyper")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A count that must fit in what is left (each element at least `unit` bytes).
    pub fn count(&mut self, unit: usize, what: &str) -> Result<usize, RpcError> {
        let n = usize::try_from(self.u32()?).map_err(|_| self.short(what))?;
        if n.saturating_mul(unit.max(1)) > self.remaining() {
            return Err(RpcError::Malformed(format!("NDR data ({what}: a count of {n} does not fit)")));
        }
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_alignment_and_bounds() {
        let mut e = Encoder::new();
        e.u8(1);
        e.u32(7);
        e.u16(3);
        e.u64(9);
        e.referent();
        assert_eq!(e.buf.len(), 1 + 3 + 4 + 2 + 6 + 8 + 4);
        let mut d = Decoder::new(&e.buf);
        assert_eq!(d.u8().unwrap(), 1);
        assert_eq!(d.u32().unwrap(), 7);
        assert_eq!(d.u16().unwrap(), 3);
        assert_eq!(d.u64().unwrap(), 9);
        assert_eq!(d.u32().unwrap(), 0x2_0000);
        assert!(d.u32().is_err());
        let huge = 0xffff_fff0u32.to_le_bytes();
        assert!(Decoder::new(&huge).count(1, "an array").is_err());
    }
}
