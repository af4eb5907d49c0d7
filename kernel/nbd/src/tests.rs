//! Client against server in memory, both against scripted peers, and the
//! transmission-phase codecs.

use crate::*;
use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;

pub(crate) const DISK: Export = Export {
    size: 64 << 20,
    flags: flags::HAS_FLAGS | flags::SEND_FLUSH | flags::SEND_FUA | flags::SEND_TRIM,
};
const CDROM: Export = Export {
    size: 1 << 30,
    flags: flags::HAS_FLAGS | flags::READ_ONLY,
};

/// Bytes written by one end and not yet read by the other: `sent` is on the
/// wire, `arrived` is what the receiver holds but has not consumed.
#[derive(Default)]
struct Pipe {
    sent: Vec<u8>,
    arrived: Vec<u8>,
}

impl Pipe {
    /// Moves up to `n` bytes across; whether any moved.
    fn deliver(&mut self, n: usize) -> bool {
        let n = n.min(self.sent.len());
        self.arrived.extend(self.sent.drain(..n));
        n > 0
    }
    fn consume(&mut self, n: usize) {
        self.arrived.drain(..n);
    }
}

/// Runs a client and a server against each other, delivering `chunk`
/// bytes at a time, until neither can move.
fn run(
    client: &mut ClientHandshake,
    server: &mut ServerHandshake,
    chunk: usize,
) -> (Result<(), NbdError>, Result<(), NbdError>) {
    let mut c2s = Pipe::default();
    let mut s2c = Pipe::default();
    let (mut cres, mut sres) = (Ok(()), Ok(()));
    for _ in 0..100_000 {
        server.poll_output(&mut s2c.sent);
        client.poll_output(&mut c2s.sent);
        let moved = s2c.deliver(chunk) | c2s.deliver(chunk);
        if cres.is_ok() {
            match client.feed(&s2c.arrived) {
                Ok(n) => s2c.consume(n),
                Err(e) => cres = Err(e),
            }
        }
        if sres.is_ok() {
            match server.feed(&c2s.arrived) {
                Ok(n) => c2s.consume(n),
                Err(e) => sres = Err(e),
            }
        }
        if !moved && s2c.sent.is_empty() && c2s.sent.is_empty() {
            // Flush what the last feeds queued, then stop.
            server.poll_output(&mut s2c.sent);
            client.poll_output(&mut c2s.sent);
            if s2c.sent.is_empty() && c2s.sent.is_empty() {
                break;
            }
        }
    }
    (cres, sres)
}

#[test]
fn go_negotiates_the_named_export_at_any_chunking() {
    for chunk in [1, 2, 3, 7, 19, 64, 4096] {
        for (name, index, export) in [("disk", 0, DISK), ("cdrom", 1, CDROM)] {
            let mut client = ClientHandshake::new(name);
            let mut server = ServerHandshake::new(&[("disk", DISK), ("cdrom", CDROM)]);
            let (c, s) = run(&mut client, &mut server, chunk);
            assert_eq!(c, Ok(()));
            assert_eq!(s, Ok(()));
            assert!(client.is_done());
            assert_eq!(client.export(), Some(export));
            assert_eq!(client.block_size(), Some(BlockSize::DEFAULT));
            assert_eq!(server.done(), Some(index));
            assert_eq!(server.export(), Some(export));
        }
    }
}

#[test]
fn the_default_export_has_the_empty_name() {
    let mut client = ClientHandshake::new("");
    let mut server = ServerHandshake::single(
        "",
        Export {
            size: 512,
            flags: 0,
        },
    );
    let (c, s) = run(&mut client, &mut server, 5);
    assert_eq!((c, s), (Ok(()), Ok(())));
    // The server adds HAS_FLAGS.
    assert_eq!(
        client.export(),
        Some(Export {
            size: 512,
            flags: flags::HAS_FLAGS
        })
    );
}

#[test]
fn an_unknown_export_is_refused_and_the_client_aborts() {
    let mut client = ClientHandshake::new("nope");
    let mut server = ServerHandshake::single("disk", DISK);
    let (c, s) = run(&mut client, &mut server, 1);
    let err = c.unwrap_err();
    assert_eq!(err, NbdError::UnknownExport("nope".into()));
    assert_eq!(err.to_string(), "the server has no export named 'nope'");
    // The client's soft disconnect reached the server, which acknowledged it.
    assert_eq!(s, Err(NbdError::ClientAborted));
    assert_eq!(client.export(), None);
    assert_eq!(server.done(), None);
    // Errors stick.
    assert!(client.feed(&[0; 64]).is_err());
    assert!(server.feed(&[0; 64]).is_err());
}

// ---- the client against scripted servers ----------------------------------

fn greeting(handshake_flags: u16) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&magic::NBDMAGIC.to_be_bytes());
    v.extend_from_slice(&magic::IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&handshake_flags.to_be_bytes());
    v
}

fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&magic::OPTION_REPLY.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&reply.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn info_export(size: u64, f: u16) -> Vec<u8> {
    let mut d = info::EXPORT.to_be_bytes().to_vec();
    d.extend_from_slice(&size.to_be_bytes());
    d.extend_from_slice(&f.to_be_bytes());
    option_reply(opt::GO, rep::INFO, &d)
}

fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut d = info::BLOCK_SIZE.to_be_bytes().to_vec();
    for v in [min, preferred, max] {
        d.extend_from_slice(&v.to_be_bytes());
    }
    option_reply(opt::GO, rep::INFO, &d)
}

fn option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    client::push_option(&mut v, option, data);
    v
}

fn go_data(name: &str, requests: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(requests.len() as u16).to_be_bytes());
    for r in requests {
        d.extend_from_slice(&r.to_be_bytes());
    }
    d
}

fn output(c: &mut ClientHandshake) -> Vec<u8> {
    let mut v = Vec::new();
    c.poll_output(&mut v);
    v
}

fn client_after_greeting(name: &str, handshake_flags: u16) -> ClientHandshake {
    let mut c = ClientHandshake::new(name);
    assert!(output(&mut c).is_empty(), "the server speaks first");
    let g = greeting(handshake_flags);
    assert_eq!(c.feed(&g[..17]), Ok(0));
    assert_eq!(c.feed(&g), Ok(18));
    c
}

#[test]
fn client_sends_go_with_a_block_size_request_and_only_offered_flags() {
    let mut c = client_after_greeting("disk", handshake_flags::FIXED_NEWSTYLE);
    let mut want = handshake_flags::C_FIXED_NEWSTYLE.to_be_bytes().to_vec();
    want.extend(option(opt::GO, &go_data("disk", &[info::BLOCK_SIZE])));
    assert_eq!(output(&mut c), want);

    let mut c = client_after_greeting(
        "",
        handshake_flags::FIXED_NEWSTYLE | handshake_flags::NO_ZEROES,
    );
    let flags = handshake_flags::C_FIXED_NEWSTYLE | handshake_flags::C_NO_ZEROES;
    assert_eq!(output(&mut c)[..4], flags.to_be_bytes());
}

#[test]
fn client_keeps_the_servers_block_sizes_and_ignores_unknown_info() {
    let mut c = client_after_greeting("d", handshake_flags::FIXED_NEWSTYLE);
    output(&mut c);
    let mut stream = option_reply(opt::GO, rep::INFO, &[0, 9, 1, 2, 3]);
    stream.extend(info_block_size(512, 4096, 1 << 20));
    stream.extend(info_export(1 << 40, flags::HAS_FLAGS | flags::READ_ONLY));
    stream.extend(option_reply(opt::GO, rep::ACK, &[]));
    let end = stream.len();
    stream.extend_from_slice(b"transmission bytes stay with the caller");
    assert_eq!(c.feed(&stream), Ok(end));
    assert_eq!(
        c.export(),
        Some(Export {
            size: 1 << 40,
            flags: flags::HAS_FLAGS | flags::READ_ONLY
        })
    );
    let b = c.block_size().unwrap();
    assert_eq!((b.min, b.preferred, b.max_payload), (512, 4096, 1 << 20));
    assert_eq!(b.max_request(), 1 << 20);
    assert_eq!(c.feed(b"more"), Ok(0));
}

#[test]
fn client_falls_back_to_export_name_when_go_is_unsupported() {
    for no_zeroes in [false, true] {
        let hflags = handshake_flags::FIXED_NEWSTYLE
            | if no_zeroes {
                handshake_flags::NO_ZEROES
            } else {
                0
            };
        let mut c = client_after_greeting("disk", hflags);
        output(&mut c);
        let unsup = option_reply(opt::GO, rep::ERR_UNSUP, b"what?");
        assert_eq!(c.feed(&unsup), Ok(unsup.len()));
        assert_eq!(output(&mut c), option(opt::EXPORT_NAME, b"disk"));
        assert!(!c.is_done());
        let mut answer = (1u64 << 30).to_be_bytes().to_vec();
        answer.extend_from_slice(&(flags::HAS_FLAGS | flags::SEND_FLUSH).to_be_bytes());
        if !no_zeroes {
            answer.extend_from_slice(&[0; 124]);
        }
        assert_eq!(c.feed(&answer[..answer.len() - 1]), Ok(0));
        assert_eq!(c.feed(&answer), Ok(answer.len()));
        assert_eq!(
            c.export(),
            Some(Export {
                size: 1 << 30,
                flags: flags::HAS_FLAGS | flags::SEND_FLUSH
            })
        );
        assert_eq!(c.block_size(), Some(BlockSize::DEFAULT));
    }
}

#[test]
fn client_uses_export_name_with_a_plain_newstyle_server() {
    let mut c = client_after_greeting("x", 0);
    let mut want = 0u32.to_be_bytes().to_vec();
    want.extend(option(opt::EXPORT_NAME, b"x"));
    assert_eq!(output(&mut c), want);
    // Closing now is how such a server refuses the name.
    assert_eq!(c.closed(), NbdError::UnknownExport("x".into()));
}

#[test]
fn client_reports_refusals_with_the_servers_message() {
    let mut c = client_after_greeting("disk", handshake_flags::FIXED_NEWSTYLE);
    output(&mut c);
    let err = c
        .feed(&option_reply(
            opt::GO,
            rep::ERR_POLICY,
            b"go away\n\x1b[31m",
        ))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "server refused NBD_OPT_GO: NBD_REP_ERR_POLICY (go away??[31m)"
    );
    // A soft disconnect is queued.
    assert_eq!(output(&mut c), option(opt::ABORT, &[]));
}

#[test]
fn client_rejects_broken_servers() {
    let fixed = handshake_flags::FIXED_NEWSTYLE;
    let cases: Vec<(Vec<u8>, NbdError)> = vec![
        (
            b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
            NbdError::BadMagic {
                what: "server greeting",
                expected: magic::NBDMAGIC,
                got: u64::from_be_bytes(*b"HTTP/1.1"),
            },
        ),
        (
            {
                let mut g = magic::NBDMAGIC.to_be_bytes().to_vec();
                g.extend_from_slice(&magic::OLDSTYLE.to_be_bytes());
                g.extend_from_slice(&[0; 2]);
                g
            },
            NbdError::Oldstyle,
        ),
        (
            [greeting(fixed), option_reply(opt::GO, rep::ACK, &[])].concat(),
            NbdError::MissingExportInfo,
        ),
        (
            [greeting(fixed), option_reply(opt::LIST, rep::ACK, &[])].concat(),
            NbdError::UnexpectedReply {
                sent: opt::GO,
                got: opt::LIST,
            },
        ),
        (
            [
                greeting(fixed),
                option_reply(opt::GO, rep::INFO, &[0; 40_000]),
            ]
            .concat(),
            NbdError::OptionReplyTooLong {
                option: opt::GO,
                length: 40_000,
            },
        ),
        (
            [greeting(fixed), info_export(4096, 0)].concat(),
            NbdError::BadTransmissionFlags(0),
        ),
        (
            [greeting(fixed), info_export(u64::MAX, 1)].concat(),
            NbdError::ExportTooLarge(u64::MAX),
        ),
        (
            [greeting(fixed), info_block_size(3, 4096, 1 << 20)].concat(),
            NbdError::BadBlockSize {
                min: 3,
                preferred: 4096,
                max_payload: 1 << 20,
            },
        ),
        (
            [
                greeting(fixed),
                option_reply(opt::GO, rep::INFO, &[0, 0, 1]),
            ]
            .concat(),
            NbdError::BadInfo { info: 0, length: 3 },
        ),
        (
            [greeting(fixed), option_reply(opt::GO, rep::INFO, &[0])].concat(),
            NbdError::BadInfo {
                info: 0xffff,
                length: 1,
            },
        ),
        (
            {
                let mut r = greeting(fixed);
                r.extend_from_slice(&[0xff; 20]);
                r
            },
            NbdError::BadMagic {
                what: "option reply",
                expected: magic::OPTION_REPLY,
                got: u64::MAX,
            },
        ),
    ];
    for (stream, want) in cases {
        let mut c = ClientHandshake::new("disk");
        assert_eq!(c.feed(&stream), Err(want.clone()), "{want}");
        assert!(!want.to_string().is_empty());
    }
}

#[test]
fn client_refuses_overlong_names() {
    let name = "n".repeat(MAX_NAME_BYTES + 1);
    let mut c = ClientHandshake::new(&name);
    assert_eq!(
        c.feed(&greeting(handshake_flags::FIXED_NEWSTYLE)),
        Err(NbdError::NameTooLong(MAX_NAME_BYTES + 1))
    );
}

// ---- the server against scripted clients ----------------------------------

fn server_output(s: &mut ServerHandshake) -> Vec<u8> {
    let mut v = Vec::new();
    s.poll_output(&mut v);
    v
}

fn server_after_flags(client_flags: u32) -> ServerHandshake {
    let mut s = ServerHandshake::new(&[("disk", DISK), ("cdrom", CDROM)]);
    assert_eq!(
        server_output(&mut s),
        greeting(handshake_flags::FIXED_NEWSTYLE | handshake_flags::NO_ZEROES)
    );
    assert_eq!(s.feed(&client_flags.to_be_bytes()[..3]), Ok(0));
    assert_eq!(s.feed(&client_flags.to_be_bytes()), Ok(4));
    s
}

#[test]
fn server_answers_export_name_with_or_without_zeroes() {
    for (client_flags, zeroes) in [(1, 124), (3, 0), (0, 124)] {
        let mut s = server_after_flags(client_flags);
        let mut input = option(opt::EXPORT_NAME, b"cdrom");
        let len = input.len();
        input.extend_from_slice(&encode_request(1, Command::Read, 0, 0, 512));
        assert_eq!(
            s.feed(&input),
            Ok(len),
            "the request is left for the caller"
        );
        let out = server_output(&mut s);
        assert_eq!(out.len(), 10 + zeroes);
        assert_eq!(out[..8], CDROM.size.to_be_bytes());
        assert_eq!(out[8..10], CDROM.flags.to_be_bytes());
        assert_eq!(s.done(), Some(1));
    }
}

#[test]
fn server_ends_the_session_for_an_unknown_export_name() {
    let mut s = server_after_flags(1);
    assert_eq!(
        s.feed(&option(opt::EXPORT_NAME, b"what")),
        Err(NbdError::UnknownExport("what".into()))
    );
    assert!(server_output(&mut s).is_empty());
}

#[test]
fn server_lists_informs_and_refuses_what_it_does_not_know() {
    let mut s = server_after_flags(3);
    let mut input = option(opt::LIST, &[]);
    input.extend(option(opt::LIST, b"x"));
    input.extend(option(opt::STRUCTURED_REPLY, &[]));
    input.extend(option(opt::STARTTLS, &[]));
    input.extend(option(0xdead, b"whatever"));
    input.extend(option(opt::INFO, &go_data("disk", &[info::NAME])));
    input.extend(option(opt::INFO, &go_data("nope", &[])));
    input.extend(option(opt::INFO, &[0, 0, 0, 9, 0, 0]));
    assert_eq!(s.feed(&input), Ok(input.len()));
    assert_eq!(s.done(), None);
    let out = server_output(&mut s);
    let mut export_info = info::EXPORT.to_be_bytes().to_vec();
    export_info.extend_from_slice(&DISK.size.to_be_bytes());
    export_info.extend_from_slice(&DISK.flags.to_be_bytes());
    let want = [
        option_reply(opt::LIST, rep::SERVER, b"\0\0\0\x04disk"),
        option_reply(opt::LIST, rep::SERVER, b"\0\0\0\x05cdrom"),
        option_reply(opt::LIST, rep::ACK, &[]),
        option_reply(opt::LIST, rep::ERR_INVALID, b"NBD_OPT_LIST takes no data"),
        option_reply(
            opt::STRUCTURED_REPLY,
            rep::ERR_UNSUP,
            b"NBD_OPT_STRUCTURED_REPLY is not supported",
        ),
        option_reply(
            opt::STARTTLS,
            rep::ERR_UNSUP,
            b"NBD_OPT_STARTTLS is not supported",
        ),
        option_reply(
            0xdead,
            rep::ERR_UNSUP,
            b"an unknown option is not supported",
        ),
        option_reply(opt::INFO, rep::INFO, &export_info),
        option_reply(opt::INFO, rep::ACK, &[]),
        option_reply(opt::INFO, rep::ERR_UNKNOWN, b"no export named 'nope'"),
        option_reply(opt::INFO, rep::ERR_INVALID, b"malformed request"),
    ]
    .concat();
    assert_eq!(out, want);
    // Still negotiating: GO works after all that.
    let go = option(opt::GO, &go_data("disk", &[info::BLOCK_SIZE]));
    assert_eq!(s.feed(&go), Ok(go.len()));
    assert_eq!(s.done(), Some(0));
}

#[test]
fn server_skips_an_overlong_option_and_refuses_it() {
    let mut s = server_after_flags(1);
    let mut input = magic::IHAVEOPT.to_be_bytes().to_vec();
    input.extend_from_slice(&opt::GO.to_be_bytes());
    input.extend_from_slice(&(MAX_OPTION_DATA + 1000).to_be_bytes());
    input.extend(vec![0xab; (MAX_OPTION_DATA + 1000) as usize]);
    // Fed in pieces: the skipped data is consumed as it comes.
    let mut at = 0;
    while at < input.len() {
        let end = (at + 777).min(input.len());
        at += s.feed(&input[at..end]).unwrap();
    }
    assert_eq!(
        server_output(&mut s),
        option_reply(opt::GO, rep::ERR_TOO_BIG, b"option data too long")
    );
    let mut long_name = magic::IHAVEOPT.to_be_bytes().to_vec();
    long_name.extend_from_slice(&opt::EXPORT_NAME.to_be_bytes());
    long_name.extend_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        s.feed(&long_name),
        Err(NbdError::ExportNameTooLong(u32::MAX))
    );
}

#[test]
fn server_acknowledges_abort_and_rejects_bad_flags_and_magic() {
    let mut s = server_after_flags(1);
    assert_eq!(
        s.feed(&option(opt::ABORT, &[])),
        Err(NbdError::ClientAborted)
    );
    assert_eq!(
        server_output(&mut s),
        option_reply(opt::ABORT, rep::ACK, &[])
    );

    let mut s = ServerHandshake::single("", DISK);
    assert_eq!(
        s.feed(&4u32.to_be_bytes()),
        Err(NbdError::BadClientFlags(4))
    );

    let mut s = server_after_flags(1);
    assert!(matches!(
        s.feed(b"GET / HTTP/1.1\r\n\r\n"),
        Err(NbdError::BadMagic {
            what: "client option",
            ..
        })
    ));
}

// ---- transmission ---------------------------------------------------------

#[test]
fn requests_and_replies_round_trip() {
    let r = encode_request(
        0x0102_0304_0506_0708,
        Command::Write,
        cmd_flags::FUA,
        1 << 33,
        4096,
    );
    assert_eq!(r[..8], [0x25, 0x60, 0x95, 0x13, 0, 1, 0, 1]);
    assert_eq!(decode_request(&r[..27]), Ok(None));
    let d = decode_request(&r).unwrap().unwrap();
    assert_eq!(
        d,
        Request {
            flags: cmd_flags::FUA,
            kind: 1,
            command: Some(Command::Write),
            cookie: 0x0102_0304_0506_0708,
            offset: 1 << 33,
            length: 4096,
        }
    );
    assert_eq!(d.payload_len(), 4096);
    for cmd in [
        Command::Read,
        Command::Write,
        Command::Disc,
        Command::Flush,
        Command::Trim,
    ] {
        let d = decode_request(&encode_request(7, cmd, 0, 0, 0))
            .unwrap()
            .unwrap();
        assert_eq!(d.command, Some(cmd));
    }

    let reply = encode_simple_reply(errno::EIO, 42);
    assert_eq!(reply[..4], [0x67, 0x44, 0x66, 0x98]);
    assert_eq!(decode_simple_reply(&reply[..15]), Ok(None));
    assert_eq!(
        decode_simple_reply(&reply),
        Ok(Some(SimpleReply {
            error: 5,
            cookie: 42
        }))
    );
}

#[test]
fn bad_headers_are_errors() {
    let mut r = encode_request(1, Command::Read, 0, 0, 1);
    r[0] ^= 1;
    assert!(matches!(decode_request(&r), Err(NbdError::BadMagic { .. })));
    let big = encode_request(1, Command::Write, 0, 0, MAX_REQUEST_BYTES + 1);
    assert_eq!(
        decode_request(&big),
        Err(NbdError::RequestTooLarge {
            length: MAX_REQUEST_BYTES + 1
        })
    );
    // A large READ decodes (no payload follows); the server refuses it.
    let read = decode_request(&encode_request(1, Command::Read, 0, 0, u32::MAX))
        .unwrap()
        .unwrap();
    assert_eq!(check_request(&read, &DISK), Err(errno::EINVAL));

    let mut structured = [0u8; 16];
    structured[..4].copy_from_slice(&magic::STRUCTURED_REPLY.to_be_bytes());
    assert_eq!(
        decode_simple_reply(&structured),
        Err(NbdError::StructuredReply)
    );
    let err = decode_simple_reply(&[0xff; 16]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad magic in the reply header: 0xffffffff where 0x67446698 belongs (is this an NBD peer?)"
    );
}

#[test]
fn the_server_checks_requests_against_the_export() {
    let req = |cmd: Option<Command>, kind: u16, flags: u16, offset: u64, length: u32| Request {
        flags,
        kind,
        command: cmd,
        cookie: 0,
        offset,
        length,
    };
    let size = DISK.size;
    let read = |o, l| req(Some(Command::Read), 0, 0, o, l);
    let write = |o, l| req(Some(Command::Write), 1, 0, o, l);
    let trim = |o, l| req(Some(Command::Trim), 4, 0, o, l);
    let flush = req(Some(Command::Flush), 3, 0, 0, 0);
    let ro = CDROM;
    let cases = [
        (read(0, 512), DISK, Ok(())),
        (read(size - 512, 512), DISK, Ok(())),
        (read(size - 511, 512), DISK, Err(errno::EINVAL)),
        (read(u64::MAX, 2), DISK, Err(errno::EINVAL)),
        (write(size - 4096, 4096), DISK, Ok(())),
        (write(size, 1), DISK, Err(errno::ENOSPC)),
        (write(0, 512), ro, Err(errno::EPERM)),
        (read(0, 512), ro, Ok(())),
        (trim(0, 1 << 20), DISK, Ok(())),
        (trim(size, 1), DISK, Err(errno::EINVAL)),
        (trim(0, 512), ro, Err(errno::EINVAL)), // no SEND_TRIM on it
        (flush, DISK, Ok(())),
        (flush, ro, Err(errno::EINVAL)),
        (
            req(Some(Command::Write), 1, cmd_flags::FUA, 0, 512),
            DISK,
            Ok(()),
        ),
        (
            req(Some(Command::Read), 0, cmd_flags::FUA, 0, 512),
            ro,
            Err(errno::EINVAL),
        ),
        (
            req(Some(Command::Read), 0, cmd_flags::DF, 0, 512),
            DISK,
            Err(errno::EINVAL),
        ),
        (req(None, 6, 0, 0, 512), DISK, Err(errno::EINVAL)),
        (req(Some(Command::Disc), 2, 0, 0, 0), DISK, Ok(())),
    ];
    for (r, export, want) in cases {
        assert_eq!(check_request(&r, &export), want, "{r:?}");
    }
    let ro_trim = Export {
        flags: ro.flags | flags::SEND_TRIM,
        ..ro
    };
    assert_eq!(check_request(&trim(0, 512), &ro_trim), Err(errno::EPERM));
}

#[test]
fn errno_and_block_size_helpers() {
    assert_eq!(errno::describe(errno::EIO), "Input/output error");
    assert_eq!(errno::describe(12345), "Invalid argument");
    let odd = BlockSize {
        min: 4096,
        preferred: 4096,
        max_payload: 0xffff_ffff,
    };
    assert!(odd.is_valid());
    assert_eq!(odd.max_request(), MAX_REQUEST_BYTES);
    let b = BlockSize {
        min: 4096,
        preferred: 4096,
        max_payload: 10_000,
    };
    assert_eq!(b.max_request(), 8192);
    assert!(!BlockSize {
        min: 1 << 17,
        preferred: 1 << 17,
        max_payload: 1 << 20
    }
    .is_valid());
    assert!(!BlockSize {
        min: 512,
        preferred: 256,
        max_payload: 1 << 20
    }
    .is_valid());
}
