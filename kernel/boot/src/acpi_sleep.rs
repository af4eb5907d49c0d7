//! The host's S5 (soft-off) sleep type from its DSDT, which the hypervisor
//! writes to PM1 control to power the machine off. The values live in AML
//! (`Name (_S5, Package () { a, b, ... })`); this finds that one object
//! without an AML interpreter, as every small kernel does: the package is
//! a constant in every firmware we know (QEMU, SeaBIOS, OVMF, real boards).

/// AML opcodes used here (ACPI 6.5, 20.2).
const NAME_OP: u8 = 0x08;
const PACKAGE_OP: u8 = 0x12;
const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const BYTE_PREFIX: u8 = 0x0A;
const WORD_PREFIX: u8 = 0x0B;
const DWORD_PREFIX: u8 = 0x0C;

/// (SLP_TYPa, SLP_TYPb) of `\_S5` in AML `aml` (a DSDT or SSDT body),
/// or None when it is not there in the usual form.
pub fn s5_sleep_types(aml: &[u8]) -> Option<(u8, u8)> {
    let mut from = 0;
    while let Some(rel) = aml.get(from..)?.windows(4).position(|w| w == b"_S5_") {
        let at = from + rel;
        from = at + 1;
        // NameOp, optionally a root prefix, then the name.
        let named = at >= 1 && (aml[at - 1] == NAME_OP || (at >= 2 && aml[at - 1] == b'\\' && aml[at - 2] == NAME_OP));
        if !named {
            continue;
        }
        if let Some(types) = package_after(aml, at + 4) {
            return Some(types);
        }
    }
    None
}

/// The first two integers of the package starting at `at`.
fn package_after(aml: &[u8], at: usize) -> Option<(u8, u8)> {
    if *aml.get(at)? != PACKAGE_OP {
        return None;
    }
    // PkgLength: bits 7:6 of the lead byte = how many more bytes follow.
    let lead = *aml.get(at + 1)?;
    let mut pos = at + 2 + usize::from(lead >> 6);
    let _num_elements = *aml.get(pos)?;
    pos += 1;
    let mut values = [0u8; 2];
    for v in &mut values {
        let (value, len) = integer(aml, pos)?;
        *v = value;
        pos += len;
    }
    Some((values[0], values[1]))
}

/// An integer term at `pos` (its low byte, as SLP_TYP is 3 bits) and the
/// number of bytes it takes.
fn integer(aml: &[u8], pos: usize) -> Option<(u8, usize)> {
    Some(match *aml.get(pos)? {
        ZERO_OP => (0, 1),
        ONE_OP => (1, 1),
        BYTE_PREFIX => (*aml.get(pos + 1)?, 2),
        WORD_PREFIX => (*aml.get(pos + 1)?, 3),
        DWORD_PREFIX => (*aml.get(pos + 1)?, 5),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_and_common_firmware_forms() {
        // QEMU's q35 DSDT: Name (_S5, Package (0x04) { Zero, Zero, Zero, Zero })
        let q35 = [0x10, 0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00];
        assert_eq!(s5_sleep_types(&q35), Some((0, 0)));
        // A board's: Name (\_S5, Package () { 0x07, 0x07, Zero, Zero }) with byte prefixes.
        let board = [0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x0A, 0x04, 0x0A, 0x07, 0x0A, 0x07, 0x00, 0x00];
        assert_eq!(s5_sleep_types(&board), Some((7, 7)));
        // PIIX4's: Package (0x04) { 0x05? } written with One/BytePrefix mixes.
        let mixed = [0x08, b'_', b'S', b'5', b'_', 0x12, 0x07, 0x04, 0x0A, 0x05, 0x01, 0x00, 0x00];
        assert_eq!(s5_sleep_types(&mixed), Some((5, 1)));
    }

    #[test]
    fn a_reference_or_a_truncated_package_is_not_taken() {
        // `_S5_` used as a name in a method call, not defined: skipped.
        assert_eq!(s5_sleep_types(&[0x70, b'_', b'S', b'5', b'_', 0x60]), None);
        // Cut off inside the package.
        assert_eq!(s5_sleep_types(&[0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x04, 0x0A]), None);
        assert_eq!(s5_sleep_types(b""), None);
        // The second of two occurrences is the definition.
        let two = [0x70, b'_', b'S', b'5', b'_', 0x08, b'_', b'S', b'5', b'_', 0x12, 0x05, 0x02, 0x0A, 0x03, 0x0A, 0x04];
        assert_eq!(s5_sleep_types(&two), Some((3, 4)));
    }
}
