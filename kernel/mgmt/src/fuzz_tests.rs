//! A deterministic fuzz test: random and mutated streams, cut at random
//! places, through `FrameReader` and `ServerSession`. Nothing may panic,
//! buffers stay bounded, and whatever the server sends decodes.

use crate::session::OUTPUT_HIGH_WATER;
use crate::tests::{all_requests, all_responses, secret, server_messages};
use crate::*;

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
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// `min + below(spread)` random bytes.
    fn some_bytes(&mut self, min: usize, spread: usize) -> Vec<u8> {
        let n = min + self.below(spread);
        self.bytes(n)
    }
}

const ITERATIONS: usize = 200_000;
const SERVER_NONCE: [u8; 32] = [1; 32];
const CLIENT_NONCE: [u8; 32] = [2; 32];

/// The login frames (Hello, Proof) with the right and with a wrong key;
/// the nonces are fixed, so they are computed once.
fn logins() -> [Vec<u8>; 2] {
    [secret(), Secret::from_bytes([8; 32])].map(|key| {
        let mut c = ClientHandshake::new(key, CLIENT_NONCE);
        let mut frames = c.hello().unwrap();
        let challenge = ServerMessage::Challenge(Challenge { version: PROTOCOL_VERSION, server_nonce: SERVER_NONCE });
        frames.extend(c.on_challenge(challenge).unwrap());
        frames
    })
}

/// A stream a client could send: maybe a login (right or wrong key), then
/// requests.
fn valid_stream(rng: &mut Rng, logins: &[Vec<u8>; 2], requests: &[Request]) -> Vec<u8> {
    let mut out = Vec::new();
    match rng.below(8) {
        0 => {}
        1 | 2 => out.extend_from_slice(&logins[1]),
        _ => out.extend_from_slice(&logins[0]),
    }
    for _ in 0..rng.below(5) {
        let r = requests[rng.below(requests.len())].clone();
        out.extend(encode_frame(&ClientMessage::Request(r)).unwrap());
    }
    if rng.below(4000) == 0 {
        let data = rng.bytes(MAX_CHUNK);
        out.extend(encode_frame(&ClientMessage::Request(Request::FileChunk { index: 0, offset: 0, data })).unwrap());
    }
    out
}

fn mutate(rng: &mut Rng, mut s: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(3) {
        if s.is_empty() {
            s = rng.some_bytes(1, 16);
            continue;
        }
        let at = rng.below(s.len());
        match rng.below(6) {
            0 => s[at] ^= 1 << rng.below(8),
            1 => s[at] = rng.next() as u8,
            2 => s.truncate(at),
            3 => {
                let junk = rng.some_bytes(1, 8);
                s.splice(at..at, junk);
            }
            4 => {
                // A length prefix anywhere, often a hostile one.
                let len = [0u32, 1, MAX_FRAME as u32, MAX_FRAME as u32 + 1, u32::MAX, rng.next() as u32][rng.below(6)];
                let end = (at + 4).min(s.len());
                s.splice(at..end, len.to_le_bytes());
            }
            _ => {
                s.remove(at);
            }
        }
    }
    s
}

fn check_output(session: &mut ServerSession, rng: &mut Rng) {
    let (input, output) = session.buffered();
    assert!(input <= FrameReader::CAPACITY, "input buffer {input}");
    assert!(output <= OUTPUT_HIGH_WATER + 4 * MAX_FRAME, "output buffer {output}");
    // The peer reads now and then; what it gets always decodes.
    if rng.below(3) == 0 {
        let out = session.take_outgoing();
        server_messages(&out);
    }
}

#[test]
fn random_and_mutated_streams_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let requests = all_requests();
    let responses = all_responses();
    let logins = logins();
    let mut throttle = AuthThrottle::new();
    let mut now = 0u64;
    let mut stats = [0usize; 4];
    for i in 0..ITERATIONS {
        // Past any throttle delay, so logins keep being tried.
        now += 31_000_000;
        let stream = match i % 4 {
            0 => rng.some_bytes(0, 64),
            1 => valid_stream(&mut rng, &logins, &requests),
            _ => {
                let s = valid_stream(&mut rng, &logins, &requests);
                mutate(&mut rng, s)
            }
        };
        let mut session = ServerSession::new(secret(), SERVER_NONCE, now);
        let mut reader = FrameReader::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let piece = &rest[..1 + rng.below(rest.len())];
            // The bare reader sees the same pieces.
            if let Ok(n) = reader.feed(piece) {
                assert!(n <= piece.len());
                while let Ok(Some(_)) = reader.next_frame() {}
            }
            assert!(reader.buffered() <= FrameReader::CAPACITY && reader.allocated() <= FrameReader::CAPACITY);
            let n = session.feed(piece);
            assert!(n <= piece.len());
            while let Some(_request) = session.next_request(now, &mut throttle) {
                session.respond(&responses[rng.below(responses.len())]);
                check_output(&mut session, &mut rng);
            }
            check_output(&mut session, &mut rng);
            // The part not taken is offered again, as a socket would.
            rest = &rest[n.max(if session.is_closed() { piece.len() } else { 0 })..];
        }
        if rng.below(2) == 0 {
            session.peer_closed();
            assert!(session.is_closed());
        }
        check_output(&mut session, &mut rng);
        server_messages(&session.take_outgoing());
        stats[session.state() as usize] += 1;
    }
    // The mix reached every state, so each path was exercised.
    assert!(stats.iter().all(|&n| n > 100), "{stats:?}");
}
