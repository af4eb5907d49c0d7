//! Input mutations: the classic byte-level ones (bit flips, random and
//! "interesting" values, arithmetic, inserts, deletes, copies, splices with
//! another corpus entry) plus the target's dictionary of tokens (magic
//! numbers, option names), stacked a few at a time.

use crate::rng::Rng;

/// Values at the edges of ranges, where parsers get their checks wrong.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    4,
    7,
    8,
    0xf,
    0x10,
    0x1f,
    0x20,
    0x40,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x200,
    0x3ff,
    0x400,
    0xfff,
    0x1000,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x10_0000,
    0x20_0000,
    0x40_0000,
    0xa_0000,
    0xf_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xc000_0000,
    0xffff_f000,
    0xffff_fffe,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    0xffff_ffff_ffff_f000,
    u64::MAX,
];

/// Mutates `data` in place (1 to 8 stacked mutations), keeping it at most
/// `max_len` bytes. `other` is another corpus entry to splice from.
pub fn mutate(data: &mut Vec<u8>, rng: &mut Rng, max_len: usize, dictionary: &[&[u8]], other: &[u8]) {
    let rounds = 1 << rng.below(4);
    for _ in 0..rounds {
        mutate_once(data, rng, max_len, dictionary, other);
    }
    data.truncate(max_len);
}

fn mutate_once(data: &mut Vec<u8>, rng: &mut Rng, max_len: usize, dictionary: &[&[u8]], other: &[u8]) {
    if data.is_empty() {
        let n = 1 + rng.below(16.min(max_len.max(1)));
        data.extend((0..n).map(|_| rng.next_u64() as u8));
        return;
    }
    let len = data.len();
    match rng.below(13) {
        0 => {
            let bit = rng.below(len * 8);
            data[bit / 8] ^= 1 << (bit % 8);
        }
        1 => data[rng.below(len)] = rng.next_u64() as u8,
        2 | 3 => {
            // An interesting value as 1, 2, 4 or 8 bytes, either endianness.
            let width = 1 << rng.below(4);
            let mut v = INTERESTING[rng.below(INTERESTING.len())];
            if rng.one_in(4) {
                v = v.wrapping_neg();
            }
            let bytes = if rng.one_in(4) { v.to_be_bytes() } else { v.to_le_bytes() };
            let src = if bytes[0] == 0 && rng.one_in(4) { &bytes[8 - width..] } else { &bytes[..width] };
            overwrite(data, rng.below(len), src);
        }
        4 => {
            // Add or subtract a small amount to a little-endian word.
            let width = 1 << rng.below(4);
            let at = rng.below(len);
            let end = (at + width).min(len);
            let mut b = [0u8; 8];
            b[..end - at].copy_from_slice(&data[at..end]);
            let delta = 1 + rng.below(35) as u64;
            let v = u64::from_le_bytes(b);
            let v = if rng.one_in(2) { v.wrapping_add(delta) } else { v.wrapping_sub(delta) };
            data[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
        }
        5 => {
            // Insert random bytes or a repeated byte.
            if len < max_len {
                let n = (1 + rng.below(16)).min(max_len - len);
                let at = rng.below(len + 1);
                let fill = rng.next_u64() as u8;
                let random = rng.one_in(2);
                let bytes: Vec<u8> = (0..n).map(|_| if random { rng.next_u64() as u8 } else { fill }).collect();
                data.splice(at..at, bytes);
            }
        }
        6 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            data.drain(at..at + n);
        }
        7 => {
            // Copy a chunk over another place of the input.
            let from = rng.below(len);
            let n = 1 + rng.below((len - from).min(64));
            let chunk = data[from..from + n].to_vec();
            overwrite(data, rng.below(len), &chunk);
        }
        8 | 9 => {
            if !dictionary.is_empty() {
                let token = dictionary[rng.below(dictionary.len())];
                let at = rng.below(len + 1);
                if rng.one_in(2) && len + token.len() <= max_len {
                    data.splice(at..at, token.iter().copied());
                } else {
                    overwrite(data, at.min(len - 1), token);
                }
            } else {
                data[rng.below(len)] ^= 0xff;
            }
        }
        10 => {
            // Splice: our head, the other's tail (or a chunk of it here).
            if !other.is_empty() {
                let from = rng.below(other.len());
                let n = 1 + rng.below((other.len() - from).min(256));
                if rng.one_in(2) {
                    data.truncate(rng.below(len + 1));
                    data.extend_from_slice(&other[from..]);
                } else {
                    overwrite(data, rng.below(len), &other[from..from + n]);
                }
            }
        }
        11 => {
            // Change the length: cut, or grow with zeros.
            if rng.one_in(2) {
                data.truncate(rng.below(len) + 1);
            } else if len < max_len {
                let n = (1 + rng.below(256)).min(max_len - len);
                data.resize(len + n, 0);
            }
        }
        _ => {
            // Swap two bytes (e.g. hex digits, ASCII options).
            let (a, b) = (rng.below(len), rng.below(len));
            data.swap(a, b);
        }
    }
}

/// Writes `src` at `at`, clipped to the input's length.
fn overwrite(data: &mut [u8], at: usize, src: &[u8]) {
    let n = src.len().min(data.len() - at);
    data[at..at + n].copy_from_slice(&src[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_respect_the_length_limit_and_change_inputs() {
        let mut rng = Rng::new(7);
        let mut changed = 0;
        for i in 0..20_000 {
            let orig: Vec<u8> = (0..(i % 40) as u8).collect();
            let mut d = orig.clone();
            mutate(&mut d, &mut rng, 32, &[b"dom0_mem=", b"\x7fELF"], b"other input");
            assert!(d.len() <= 32);
            changed += usize::from(d != orig);
        }
        assert!(changed > 15_000, "{changed}");
    }
}
