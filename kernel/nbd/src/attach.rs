//! The attach hello: how a server that *connects* to its client (a
//! `file:` disk served from dom0 over vsock, where the hypervisor cannot
//! connect to dom0) says which disk it serves. It sends
//! [`ATTACH_HELLO_BYTES`] bytes first: [`ATTACH_MAGIC`], then the random
//! token the `xl create` request carried for the disk. Then the ordinary
//! NBD handshake follows on the same stream, the server speaking first as
//! always. Nothing answers the hello: a client that knows no disk by the
//! token closes the connection.

/// `FeNbdAt1`: the first 8 bytes of the hello.
pub const ATTACH_MAGIC: [u8; 8] = *b"FeNbdAt1";
/// The token's length: 128 random bits.
pub const ATTACH_TOKEN_BYTES: usize = 16;
/// The whole hello.
pub const ATTACH_HELLO_BYTES: usize = ATTACH_MAGIC.len() + ATTACH_TOKEN_BYTES;

/// The hello for `token`.
pub fn encode_attach_hello(token: &[u8; ATTACH_TOKEN_BYTES]) -> [u8; ATTACH_HELLO_BYTES] {
    let mut hello = [0u8; ATTACH_HELLO_BYTES];
    hello[..8].copy_from_slice(&ATTACH_MAGIC);
    hello[8..].copy_from_slice(token);
    hello
}

/// Why a hello is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachError {
    /// The first bytes are not [`ATTACH_MAGIC`] (said as soon as a byte
    /// differs, so a peer speaking something else is not waited for).
    BadMagic,
    /// The all-zero token, which no request carries.
    ZeroToken,
}

impl core::fmt::Display for AttachError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AttachError::BadMagic => f.write_str("not an NBD attach hello (bad magic)"),
            AttachError::ZeroToken => f.write_str("an attach hello with the all-zero token"),
        }
    }
}

/// The token of the hello at the start of `received`: `Ok(None)` while
/// fewer than [`ATTACH_HELLO_BYTES`] bytes are in (and they could still
/// be a hello). Bytes after the hello are the handshake's and not looked
/// at.
pub fn decode_attach_hello(received: &[u8]) -> Result<Option<[u8; ATTACH_TOKEN_BYTES]>, AttachError> {
    let magic = received.len().min(ATTACH_MAGIC.len());
    if received[..magic] != ATTACH_MAGIC[..magic] {
        return Err(AttachError::BadMagic);
    }
    if received.len() < ATTACH_HELLO_BYTES {
        return Ok(None);
    }
    let mut token = [0u8; ATTACH_TOKEN_BYTES];
    token.copy_from_slice(&received[ATTACH_MAGIC.len()..ATTACH_HELLO_BYTES]);
    if token == [0; ATTACH_TOKEN_BYTES] {
        return Err(AttachError::ZeroToken);
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_round_trips_byte_by_byte() {
        let token = [0xa5; ATTACH_TOKEN_BYTES];
        let mut stream = encode_attach_hello(&token).to_vec();
        stream.extend_from_slice(b"NBDMAGIC");
        for n in 0..ATTACH_HELLO_BYTES {
            assert_eq!(decode_attach_hello(&stream[..n]), Ok(None), "{n} bytes");
        }
        assert_eq!(decode_attach_hello(&stream), Ok(Some(token)));
        assert_eq!(decode_attach_hello(&stream[..ATTACH_HELLO_BYTES]), Ok(Some(token)));
    }

    #[test]
    fn bad_hellos_are_refused_early() {
        // The server's NBD greeting where the hello belongs.
        assert_eq!(decode_attach_hello(b"N"), Err(AttachError::BadMagic));
        assert_eq!(decode_attach_hello(b"NBDMAGICIHAVEOPT"), Err(AttachError::BadMagic));
        let mut hello = encode_attach_hello(&[1; ATTACH_TOKEN_BYTES]);
        hello[7] ^= 1;
        assert_eq!(decode_attach_hello(&hello), Err(AttachError::BadMagic));
        assert_eq!(decode_attach_hello(&encode_attach_hello(&[0; ATTACH_TOKEN_BYTES])), Err(AttachError::ZeroToken));
        // Any input: no panic.
        for len in 0..40 {
            for b in [0u8, 0x46, 0xff] {
                let _ = decode_attach_hello(&vec![b; len]);
            }
        }
    }
}
