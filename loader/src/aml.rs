//! A tiny AML encoder: just what the guest DSDT needs (names, integers,
//! strings, packages, scopes, devices, EISA IDs). Encodings follow ACPI 6.x
//! §20 (AML grammar).

use alloc::vec::Vec;

pub const ZERO_OP: u8 = 0x00;
pub const ONE_OP: u8 = 0x01;
pub const NAME_OP: u8 = 0x08;
pub const BYTE_PREFIX: u8 = 0x0a;
pub const WORD_PREFIX: u8 = 0x0b;
pub const DWORD_PREFIX: u8 = 0x0c;
pub const STRING_PREFIX: u8 = 0x0d;
pub const QWORD_PREFIX: u8 = 0x0e;
pub const SCOPE_OP: u8 = 0x10;
pub const PACKAGE_OP: u8 = 0x12;
pub const EXT_OP_PREFIX: u8 = 0x5b;
pub const DEVICE_OP: u8 = 0x82;
pub const ROOT_CHAR: u8 = b'\\';
pub const DUAL_NAME_PREFIX: u8 = 0x2e;
pub const MULTI_NAME_PREFIX: u8 = 0x2f;
pub const ONES_OP: u8 = 0xff;

/// Largest value a PkgLength can encode (28 bits).
pub const PKG_LENGTH_MAX: usize = (1 << 28) - 1;

/// Encode a PkgLength for a body of `body_len` bytes. The encoded length
/// counts the PkgLength bytes themselves. `None` if too large.
/// `BufferOp`.
pub const BUFFER_OP: u8 = 0x11;

pub fn pkg_length(body_len: usize) -> Option<Vec<u8>> {
    // One byte: bits 0-5 hold the length (< 64).
    if body_len + 1 < 0x40 {
        return Some(alloc::vec![(body_len + 1) as u8]);
    }
    for extra in 1..=3usize {
        let total = body_len.checked_add(1 + extra)?;
        // Lead byte holds 4 bits, each following byte 8.
        if total < 1 << (4 + 8 * extra) {
            let mut v = alloc::vec![(extra as u8) << 6 | (total & 0xf) as u8];
            for i in 0..extra {
                v.push((total >> (4 + 8 * i)) as u8);
            }
            return Some(v);
        }
    }
    None
}

/// A 4-character NameSeg: `_S5` becomes `_S5_`. Panics on names that are
/// not 1..=4 characters of `[A-Z0-9_]` starting with a non-digit (our names
/// are literals in this crate).
pub fn name_seg(s: &str) -> [u8; 4] {
    let b = s.as_bytes();
    assert!(!b.is_empty() && b.len() <= 4, "bad AML NameSeg {s:?}");
    assert!(!b[0].is_ascii_digit(), "bad AML NameSeg {s:?}");
    let mut seg = [b'_'; 4];
    for (i, &c) in b.iter().enumerate() {
        assert!(
            c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_',
            "bad AML NameSeg {s:?}"
        );
        seg[i] = c;
    }
    seg
}

/// A NameString: optional leading `\`, then dot-separated segments.
pub fn name_string(path: &str) -> Vec<u8> {
    let mut v = Vec::new();
    let rest = match path.strip_prefix('\\') {
        Some(r) => {
            v.push(ROOT_CHAR);
            r
        }
        None => path,
    };
    let segs: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('.').collect()
    };
    match segs.len() {
        0 => v.push(0x00), // NullName
        1 => {}
        2 => v.push(DUAL_NAME_PREFIX),
        n => {
            v.push(MULTI_NAME_PREFIX);
            v.push(u8::try_from(n).expect("too many name segments"));
        }
    }
    for s in segs {
        v.extend_from_slice(&name_seg(s));
    }
    v
}

/// The shortest integer encoding of `v`.
pub fn integer(v: u64) -> Vec<u8> {
    match v {
        0 => alloc::vec![ZERO_OP],
        1 => alloc::vec![ONE_OP],
        u64::MAX => alloc::vec![ONES_OP],
        v if v <= 0xff => alloc::vec![BYTE_PREFIX, v as u8],
        v if v <= 0xffff => {
            let mut o = alloc::vec![WORD_PREFIX];
            o.extend_from_slice(&(v as u16).to_le_bytes());
            o
        }
        v if v <= 0xffff_ffff => {
            let mut o = alloc::vec![DWORD_PREFIX];
            o.extend_from_slice(&(v as u32).to_le_bytes());
            o
        }
        v => {
            let mut o = alloc::vec![QWORD_PREFIX];
            o.extend_from_slice(&v.to_le_bytes());
            o
        }
    }
}

/// A DWordConst (always 4 bytes), e.g. for EISA IDs.
pub fn dword(v: u32) -> Vec<u8> {
    let mut o = alloc::vec![DWORD_PREFIX];
    o.extend_from_slice(&v.to_le_bytes());
    o
}

/// A String (ASCII, no NUL inside).
pub fn string(s: &str) -> Vec<u8> {
    assert!(s.is_ascii() && !s.contains('\0'));
    let mut o = alloc::vec![STRING_PREFIX];
    o.extend_from_slice(s.as_bytes());
    o.push(0);
    o
}

/// `Name(path, object)`.
pub fn name(path: &str, object: &[u8]) -> Vec<u8> {
    let mut o = alloc::vec![NAME_OP];
    o.extend(name_string(path));
    o.extend_from_slice(object);
    o
}

fn with_pkg_length(prefix: &[u8], body: &[u8]) -> Vec<u8> {
    let mut o = prefix.to_vec();
    o.extend(pkg_length(body.len()).expect("AML object too large"));
    o.extend_from_slice(body);
    o
}

/// `Package(n) { elements... }` (at most 255 elements).
/// `Buffer(len) { bytes }`.
pub fn buffer(bytes: &[u8]) -> Vec<u8> {
    let mut body = integer(bytes.len() as u64);
    body.extend_from_slice(bytes);
    let mut out = alloc::vec![BUFFER_OP];
    out.extend(pkg_length(body.len()).unwrap_or_default());
    out.extend(body);
    out
}

pub fn package(elements: &[Vec<u8>]) -> Vec<u8> {
    let n = u8::try_from(elements.len()).expect("AML package too long");
    let mut body = alloc::vec![n];
    for e in elements {
        body.extend_from_slice(e);
    }
    with_pkg_length(&[PACKAGE_OP], &body)
}

/// `Scope(path) { body }`.
pub fn scope(path: &str, body: &[u8]) -> Vec<u8> {
    let mut b = name_string(path);
    b.extend_from_slice(body);
    with_pkg_length(&[SCOPE_OP], &b)
}

/// `Device(path) { body }`.
pub fn device(path: &str, body: &[u8]) -> Vec<u8> {
    let mut b = name_string(path);
    b.extend_from_slice(body);
    with_pkg_length(&[EXT_OP_PREFIX, DEVICE_OP], &b)
}

/// `EisaId("PNP0C0C")` as the 32-bit value AML stores: the three letters
/// compressed into 15 bits and the four hex digits, byte-swapped so the
/// in-memory bytes read `41 D0 0C 0C`.
pub fn eisa_id(id: &str) -> u32 {
    let b = id.as_bytes();
    assert!(b.len() == 7, "EISA ID must be 7 characters");
    let l = |c: u8| {
        assert!(c.is_ascii_uppercase());
        u32::from(c - 0x40)
    };
    let hex = |c: u8| {
        (c as char)
            .to_digit(16)
            .expect("EISA ID digits must be hex")
    };
    let vendor = (l(b[0]) << 10) | (l(b[1]) << 5) | l(b[2]);
    let product = (hex(b[3]) << 12) | (hex(b[4]) << 8) | (hex(b[5]) << 4) | hex(b[6]);
    let be = (vendor << 16) | product;
    be.swap_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn pkg_length_encoding() {
        assert_eq!(pkg_length(0).unwrap(), [0x01]);
        assert_eq!(pkg_length(61).unwrap(), [0x3e]);
        assert_eq!(pkg_length(62).unwrap(), [0x3f]);
        // 63 + 2 = 65 = 0x41: lead 0x40 | 1, next 0x04.
        assert_eq!(pkg_length(63).unwrap(), [0x41, 0x04]);
        assert_eq!(pkg_length(0xffd).unwrap(), [0x4f, 0xff]);
        // 0xffe + 2 = 0x1000 needs 3 bytes: 0x1000 + 1 = 0x1001.
        assert_eq!(pkg_length(0xffe).unwrap(), [0x81, 0x00, 0x01]);
        assert_eq!(pkg_length(0xf_fffc).unwrap(), [0x8f, 0xff, 0xff]);
        assert_eq!(pkg_length(0xf_fffd).unwrap(), [0xc1, 0x00, 0x00, 0x01]);
        assert_eq!(
            pkg_length(PKG_LENGTH_MAX - 4).unwrap(),
            [0xcf, 0xff, 0xff, 0xff]
        );
        assert!(pkg_length(PKG_LENGTH_MAX - 3).is_none());
        // Decode round trip for a spread of sizes.
        for len in (0..70000).step_by(7) {
            let p = pkg_length(len).unwrap();
            let n = (p[0] >> 6) as usize;
            let mut total = if n == 0 {
                (p[0] & 0x3f) as usize
            } else {
                (p[0] & 0xf) as usize
            };
            for i in 0..n {
                total |= (p[1 + i] as usize) << (4 + 8 * i);
            }
            assert_eq!(p.len(), n + 1);
            assert_eq!(total, len + p.len(), "len {len}");
        }
    }

    #[test]
    fn names_and_integers() {
        assert_eq!(name_seg("_S5"), *b"_S5_");
        assert_eq!(name_string("\\_SB"), b"\\_SB_");
        assert_eq!(name_string("\\_SB.PWRB"), b"\\\x2e_SB_PWRB");
        assert_eq!(name_string("\\A.B.C"), b"\\\x2f\x03A___B___C___");
        assert_eq!(name_string("\\"), b"\\\x00");
        assert_eq!(integer(0), [0x00]);
        assert_eq!(integer(1), [0x01]);
        assert_eq!(integer(5), [0x0a, 0x05]);
        assert_eq!(integer(0x1234), [0x0b, 0x34, 0x12]);
        assert_eq!(integer(0x12345), [0x0c, 0x45, 0x23, 0x01, 0x00]);
        assert_eq!(integer(0x1_0000_0000), [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(integer(u64::MAX), [0xff]);
        assert_eq!(string("ab"), [0x0d, b'a', b'b', 0]);
    }

    #[test]
    fn eisa_ids() {
        assert_eq!(eisa_id("PNP0C0C"), 0x0c0c_d041);
        assert_eq!(eisa_id("PNP0C0C").to_le_bytes(), [0x41, 0xd0, 0x0c, 0x0c]);
        assert_eq!(eisa_id("PNP0A03"), 0x030a_d041);
        assert_eq!(eisa_id("PNP0501"), 0x0105_d041);
    }

    #[test]
    fn objects() {
        // Name(_S5_, Package(4){5, 5, 0, 0}) as iasl emits it.
        let s5 = name(
            "_S5",
            &package(&[integer(5), integer(5), integer(0), integer(0)]),
        );
        assert_eq!(
            s5,
            [0x08, b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00]
        );
        // Device(PWRB) { Name(_HID, EisaId("PNP0C0C")) }
        let d = device("PWRB", &name("_HID", &dword(eisa_id("PNP0C0C"))));
        assert_eq!(
            d,
            [
                0x5b, 0x82, 0x0f, b'P', b'W', b'R', b'B', 0x08, b'_', b'H', b'I', b'D', 0x0c, 0x41,
                0xd0, 0x0c, 0x0c
            ]
        );
        let s = scope("\\_SB", &d);
        assert_eq!(&s[..7], &[0x10, 0x17, b'\\', b'_', b'S', b'B', b'_']);
        assert_eq!(s.len(), 0x17 + 1);
        // A package long enough to need a 2-byte PkgLength.
        let big = package(&vec![integer(0x1234); 30]);
        assert_eq!(big[0], PACKAGE_OP);
        assert_eq!(big[1] >> 6, 1);
        let total = ((big[1] & 0xf) as usize) | ((big[2] as usize) << 4);
        assert_eq!(total, big.len() - 1);
    }
}
