//! A deterministic fuzz test of both handshakes and the header decoders:
//! random and mutated streams, cut at random places. Nothing may panic,
//! `feed` never claims more than it was given, buffered output stays
//! bounded, and what the decoders accept keeps its invariants.

use crate::tests::DISK;
use crate::*;
use alloc::vec::Vec;

/// xorshift64: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Up to `max - 1` random bytes.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// A number a parser finds interesting: small, near a limit, or random.
    fn u32ish(&mut self) -> u32 {
        match self.below(6) {
            0 => self.below(32) as u32,
            1 => MAX_OPTION_DATA
                .wrapping_add(self.below(3) as u32)
                .wrapping_sub(1),
            2 => u32::MAX - self.below(3) as u32,
            3 => 12 + self.below(4) as u32,
            _ => self.next() as u32,
        }
    }
}

fn be(v: &mut Vec<u8>, x: u64, bytes: usize) {
    v.extend_from_slice(&x.to_be_bytes()[8 - bytes..]);
}

/// A plausible piece of what a client sends during the handshake.
fn client_piece(r: &mut Rng) -> Vec<u8> {
    let mut v = Vec::new();
    match r.below(8) {
        0 => be(&mut v, r.below(4) as u64, 4), // client flags
        1..=5 => {
            let option = [1, 2, 3, 5, 6, 7, 8, 9, r.next() as u32][r.below(9)];
            let data = match r.below(4) {
                0 => {
                    let mut d = Vec::new();
                    let name: &[u8] = [&b"disk"[..], b"", b"cdrom", b"x"][r.below(4)];
                    be(&mut d, name.len() as u64, 4);
                    d.extend_from_slice(name);
                    let n = r.below(4);
                    be(&mut d, n as u64, 2);
                    for _ in 0..n {
                        be(&mut d, r.below(5) as u64, 2);
                    }
                    d
                }
                1 => b"disk".to_vec(),
                2 => Vec::new(),
                _ => r.bytes(40),
            };
            let len = if r.below(8) == 0 {
                r.u32ish()
            } else {
                data.len() as u32
            };
            be(&mut v, magic::IHAVEOPT, 8);
            be(&mut v, option.into(), 4);
            be(&mut v, len.into(), 4);
            v.extend(data);
        }
        6 => v.extend_from_slice(&encode_request(r.next(), Command::Read, 0, 0, 512)),
        _ => v = r.bytes(64),
    }
    v
}

/// A plausible piece of what a server sends during the handshake.
fn server_piece(r: &mut Rng) -> Vec<u8> {
    let mut v = Vec::new();
    match r.below(8) {
        0 => {
            be(&mut v, magic::NBDMAGIC, 8);
            be(
                &mut v,
                [magic::IHAVEOPT, magic::OLDSTYLE, r.next()][r.below(3)],
                8,
            );
            be(&mut v, r.below(4) as u64, 2);
        }
        1..=5 => {
            let reply = [
                rep::ACK,
                rep::INFO,
                rep::INFO,
                rep::SERVER,
                rep::ERR_UNSUP,
                rep::ERR_UNKNOWN,
                rep::ERR_POLICY,
                r.next() as u32,
            ][r.below(8)];
            let data = match r.below(4) {
                0 => {
                    let mut d = Vec::new();
                    be(&mut d, 0, 2);
                    be(&mut d, r.next() >> r.below(64), 8);
                    be(&mut d, r.next() & 0xffff, 2);
                    d
                }
                1 => {
                    let mut d = Vec::new();
                    be(&mut d, 3, 2);
                    for _ in 0..3 {
                        be(&mut d, 1u64 << r.below(33), 4);
                    }
                    d
                }
                2 => Vec::new(),
                _ => r.bytes(40),
            };
            let option = if r.below(10) == 0 {
                r.next() as u32
            } else {
                opt::GO
            };
            let len = if r.below(8) == 0 {
                r.u32ish()
            } else {
                data.len() as u32
            };
            be(&mut v, magic::OPTION_REPLY, 8);
            be(&mut v, option.into(), 4);
            be(&mut v, reply.into(), 4);
            be(&mut v, len.into(), 4);
            v.extend(data);
        }
        6 => {
            // An NBD_OPT_EXPORT_NAME answer, with or without the zeroes.
            be(&mut v, r.next() >> r.below(64), 8);
            be(&mut v, r.next() & 0xffff, 2);
            v.extend(core::iter::repeat_n(0, [0, 124][r.below(2)]));
        }
        _ => v = r.bytes(64),
    }
    v
}

/// Flips, drops or duplicates a few bytes.
fn mutate(r: &mut Rng, v: &mut Vec<u8>) {
    for _ in 0..r.below(4) {
        if v.is_empty() {
            return;
        }
        let i = r.below(v.len());
        match r.below(3) {
            0 => v[i] ^= 1 << r.below(8),
            1 => {
                v.remove(i);
            }
            _ => v.insert(i, r.next() as u8),
        }
    }
}

/// Feeds `stream` in random pieces the way a caller would (keeping what
/// was not consumed) until an error or until it stops moving.
fn drive(r: &mut Rng, stream: &[u8], mut feed: impl FnMut(&[u8]) -> Result<usize, NbdError>) {
    let mut held: Vec<u8> = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let n = 1 + r.below(64);
        let end = (at + n).min(stream.len());
        held.extend_from_slice(&stream[at..end]);
        at = end;
        match feed(&held) {
            Ok(used) => {
                assert!(used <= held.len());
                held.drain(..used);
            }
            Err(e) => {
                assert!(!alloc::format!("{e}").is_empty());
                return;
            }
        }
        // What a caller buffers is bounded by the largest message.
        assert!(held.len() <= MAX_OPTION_REPLY as usize + 64 + 200);
    }
}

#[test]
fn fuzz_server_handshake() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let mut stream = Vec::new();
        if r.below(4) != 0 {
            be(&mut stream, r.below(4) as u64, 4);
        }
        for _ in 0..1 + r.below(6) {
            stream.extend(client_piece(&mut r));
        }
        mutate(&mut r, &mut stream);
        let mut server = ServerHandshake::new(&[("disk", DISK), ("", DISK)]);
        let mut out = Vec::new();
        drive(&mut r, &stream, |input| {
            let res = server.feed(input);
            server.poll_output(&mut out);
            // Each option is answered by at most a few short replies.
            assert!(out.len() <= 18 + 8 * 200 + stream.len() * 4);
            res
        });
        if let Some(i) = server.done() {
            assert!(i < 2);
        }
    }
}

#[test]
fn fuzz_client_handshake() {
    let mut r = Rng(0x0123_4567_89ab_cdef);
    let mut negotiated = 0;
    for _ in 0..20_000 {
        let mut stream = Vec::new();
        if r.below(4) != 0 {
            be(&mut stream, magic::NBDMAGIC, 8);
            be(&mut stream, magic::IHAVEOPT, 8);
            be(&mut stream, r.below(4) as u64, 2);
        }
        for _ in 0..1 + r.below(6) {
            stream.extend(server_piece(&mut r));
        }
        if r.below(2) == 0 {
            mutate(&mut r, &mut stream);
        }
        let mut client = ClientHandshake::new(["disk", ""][r.below(2)]);
        let mut out = Vec::new();
        drive(&mut r, &stream, |input| {
            let res = client.feed(input);
            client.poll_output(&mut out);
            assert!(out.len() <= 4 + 3 * (16 + 4 + 4 + 4));
            res
        });
        if let Some(e) = client.export() {
            negotiated += 1;
            assert!(e.flags & flags::HAS_FLAGS != 0);
            assert!(e.size <= i64::MAX as u64);
            assert!(client.block_size().unwrap().is_valid());
        }
        let _ = client.closed();
    }
    assert!(
        negotiated > 100,
        "the fuzz reached success only {negotiated} times"
    );
}

#[test]
fn fuzz_transmission_headers() {
    let mut r = Rng(0xdead_beef_cafe_f00d);
    for _ in 0..100_000 {
        let mut b = if r.below(2) == 0 {
            let cmd = [
                Command::Read,
                Command::Write,
                Command::Disc,
                Command::Flush,
                Command::Trim,
            ][r.below(5)];
            encode_request(
                r.next(),
                cmd,
                r.next() as u16 & 7,
                r.next() >> r.below(64),
                r.u32ish(),
            )
            .to_vec()
        } else {
            r.bytes(40)
        };
        mutate(&mut r, &mut b);
        if let Ok(Some(req)) = decode_request(&b) {
            assert!(req.payload_len() <= MAX_REQUEST_BYTES);
            let export = Export {
                size: r.next() >> r.below(64),
                flags: r.next() as u16 | flags::HAS_FLAGS,
            };
            if check_request(&req, &export).is_ok() {
                match req.command {
                    Some(Command::Read | Command::Write | Command::Trim) => {
                        assert!(req.offset + u64::from(req.length) <= export.size);
                    }
                    Some(_) => {}
                    None => panic!("unknown commands are refused"),
                }
                if req.command == Some(Command::Write) {
                    assert!(!export.read_only());
                }
            }
        }
        let _ = decode_simple_reply(&b);
    }
}
