//! Unit tests: messages, framing, the handshake and session, the throttle,
//! secrets and uploads. The fuzz test is in `fuzz_tests.rs`.

use crate::frame::HEADER_LEN;
use crate::session::{HANDSHAKE_TIMEOUT_US, REQUEST_VARIANTS};
use crate::throttle::{BASE_DELAY_US, MAX_DELAY_US};
use crate::*;

pub(crate) const KEY: [u8; 32] = [7; 32];

pub(crate) fn secret() -> Secret {
    Secret::from_bytes(KEY)
}

pub(crate) fn all_requests() -> Vec<Request> {
    let dom = || DomRef::Name("web".into());
    vec![
        Request::List,
        Request::Info,
        Request::Uptime,
        Request::Dmesg { clear: true },
        Request::Destroy(DomRef::Id(3)),
        Request::Shutdown { dom: dom() },
        Request::Reboot(dom()),
        Request::Pause(DomRef::Id(0)),
        Request::Unpause(dom()),
        Request::VcpuList(None),
        Request::VcpuPin { dom: dom(), vcpu: Some(1), pcpus: 0b1011 },
        Request::Create {
            config_name: "web.cfg".into(),
            config_text: "name='web'\n".into(),
            files: vec![FileMeta { name: "vmlinuz".into(), len: 1234, sha256: [9; 32] }],
            served: vec![
                ServedDisk { target: "/srv/web.img".into(), port: 40001, export: "xvda".into(), vsock_token: None },
                ServedDisk { target: "/srv/db.img".into(), port: 0, export: "xvdb".into(), vsock_token: Some([0x5a; 16]) },
            ],
        },
        Request::FileChunk { index: 0, offset: 65536, data: vec![1, 2, 3] },
        Request::CreateCommit,
        Request::ConsoleAttach(DomRef::Id(1)),
        Request::ConsoleInput(b"ls\r".to_vec()),
        Request::ConsoleDetach,
        Request::Trigger { dom: dom(), trigger: Trigger::Nmi, vcpu: 1 },
        Request::NetworkList(dom()),
    ]
}

pub(crate) fn all_responses() -> Vec<Response> {
    vec![
        Response::Ok,
        Response::Domains(vec![DomainInfo {
            name: "Domain-0".into(),
            id: 0,
            mem_mib: 256,
            vcpus: 2,
            state: DomainState(DomainState::RUNNING),
            cpu_time_ns: 12_345_678_900,
        }]),
        Response::Host(HostInfo {
            version: "Ferrite 0.1.0".into(),
            host_cpus: 4,
            total_mib: 4096,
            free_mib: 1000,
            free_bytes: 0,
            heap_used_bytes: 0,
            uptime_ns: 99,
            capabilities: vec!["hvm-x86_64".into(), "pvh-x86_64".into()],
            cmdline: "console=com1".into(),
        }),
        Response::Uptime(vec![UptimeInfo { name: "web".into(), id: 4, uptime_ns: 1 << 40 }]),
        Response::Log("(ferrite) boot complete\n".into()),
        Response::Vcpus(vec![VcpuInfo {
            dom_name: "web".into(),
            dom_id: 4,
            vcpu: 0,
            pcpu: None,
            state: VcpuState(VcpuState::BLOCKED),
            time_ns: 5,
            affinity: u64::MAX,
        }]),
        Response::Created { id: 5 },
        Response::ConsoleOutput(b"login: ".to_vec()),
        Response::Error(ErrorReply::new(ErrorCode::NoSuchDomain, "domain 'x' does not exist")),
        Response::Vifs(vec![VifInfo {
            index: 0,
            mac: [0, 0x16, 0x3e, 1, 2, 3],
            bridge: "bridge0".into(),
            model: "virtio-net".into(),
            connected: true,
            tx_packets: 1,
            tx_bytes: 60,
            rx_packets: 2,
            rx_bytes: 120,
            tx_dropped: 3,
            tx_spoofed: 1,
            rx_dropped: 4,
        }]),
    ]
}

/// Decodes every frame in `bytes`.
pub(crate) fn server_messages(bytes: &[u8]) -> Vec<ServerMessage> {
    let mut reader = FrameReader::new();
    assert_eq!(reader.feed(bytes).unwrap(), bytes.len());
    let mut out = Vec::new();
    while let Some(p) = reader.next_frame().unwrap() {
        out.push(decode::<ServerMessage>(&p).unwrap());
    }
    assert_eq!(reader.buffered(), 0, "partial frame in the output");
    out
}

fn client_frame(m: &ClientMessage) -> Vec<u8> {
    encode_frame(m).unwrap()
}

/// Feeds `bytes` (all of them, pulling requests in between) and returns
/// the requests and the server's messages.
fn drive(s: &mut ServerSession, t: &mut AuthThrottle, now: u64, bytes: &[u8]) -> (Vec<Request>, Vec<ServerMessage>) {
    let mut requests = Vec::new();
    let mut rest = bytes;
    loop {
        let n = s.feed(rest);
        rest = &rest[n..];
        while let Some(r) = s.next_request(now, t) {
            requests.push(r);
        }
        if rest.is_empty() {
            break;
        }
    }
    (requests, server_messages(&s.take_outgoing()))
}

fn error_code(m: &ServerMessage) -> ErrorCode {
    match m {
        ServerMessage::Response(Response::Error(e)) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A full login with `client_key` against a server holding [`KEY`].
fn login(client_key: [u8; 32]) -> (ServerSession, AuthThrottle, Result<(), HandshakeError>) {
    let mut s = ServerSession::new(secret(), [1; 32], 0);
    let mut t = AuthThrottle::new();
    let mut c = ClientHandshake::new(Secret::from_bytes(client_key), [2; 32]);
    let (_, answers) = drive(&mut s, &mut t, 0, &c.hello().unwrap());
    assert_eq!(answers.len(), 1);
    let proof = c.on_challenge(answers[0].clone()).unwrap();
    let (_, answers) = drive(&mut s, &mut t, 0, &proof);
    assert_eq!(answers.len(), 1);
    let result = c.on_welcome(answers[0].clone());
    (s, t, result)
}

#[test]
fn every_message_round_trips() {
    for r in all_requests() {
        let m = ClientMessage::Request(r);
        let frame = encode_frame(&m).unwrap();
        assert_eq!(u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize, frame.len() - HEADER_LEN);
        assert_eq!(decode::<ClientMessage>(&frame[HEADER_LEN..]).unwrap(), m);
    }
    for r in all_requests() {
        assert_eq!(encode_request(&r).unwrap(), encode_frame(&ClientMessage::Request(r)).unwrap());
    }
    for r in all_responses() {
        assert_eq!(encode_response(&r).unwrap(), encode_frame(&ServerMessage::Response(r.clone())).unwrap());
        let m = ServerMessage::Response(r);
        assert_eq!(decode::<ServerMessage>(&encode_frame(&m).unwrap()[HEADER_LEN..]).unwrap(), m);
    }
    let handshake = [
        ClientMessage::Hello(Hello { version: 1, client_nonce: [3; 32] }),
        ClientMessage::Proof(Proof { mac: [4; 32] }),
    ];
    for m in handshake {
        assert_eq!(decode::<ClientMessage>(&encode_frame(&m).unwrap()[HEADER_LEN..]).unwrap(), m);
    }
    for m in [
        ServerMessage::Challenge(Challenge { version: 1, server_nonce: [5; 32] }),
        ServerMessage::Welcome(Welcome { server_mac: [6; 32] }),
    ] {
        assert_eq!(decode::<ServerMessage>(&encode_frame(&m).unwrap()[HEADER_LEN..]).unwrap(), m);
    }
}

#[test]
fn wire_layout_is_stable() {
    // Hello is variant 0 with the version first, forever.
    let hello = encode_frame(&ClientMessage::Hello(Hello { version: 1, client_nonce: [0; 32] })).unwrap();
    assert_eq!(&hello[HEADER_LEN..HEADER_LEN + 2], &[0, 1]);
    // REQUEST_VARIANTS follows the enum: the last variant has index N-1.
    let last = all_requests().pop().unwrap();
    let frame = encode_frame(&ClientMessage::Request(last)).unwrap();
    assert_eq!(&frame[HEADER_LEN..HEADER_LEN + 2], &[2, REQUEST_VARIANTS as u8 - 1]);
    assert_eq!(all_requests().len(), REQUEST_VARIANTS as usize);
    // An error code from a newer peer still decodes.
    assert_eq!(decode::<ErrorCode>(&[99]).unwrap(), ErrorCode::Unknown);
    // ServedDisk: target, port, export where they always were; the vsock
    // token after them.
    let tcp = ServedDisk { target: "a".into(), port: 300, export: "x".into(), vsock_token: None };
    assert_eq!(postcard::to_allocvec(&tcp).unwrap(), [1, b'a', 0xac, 0x02, 1, b'x', 0]);
    let vsock = ServedDisk { vsock_token: Some([7; 16]), ..tcp };
    let mut expected = vec![1, b'a', 0xac, 0x02, 1, b'x', 1];
    expected.extend_from_slice(&[7; 16]);
    assert_eq!(postcard::to_allocvec(&vsock).unwrap(), expected);
}

#[test]
fn decode_rejects_garbage_and_trailing_bytes() {
    let frame = encode_frame(&ClientMessage::Request(Request::List)).unwrap();
    let mut payload = frame[HEADER_LEN..].to_vec();
    payload.push(0);
    assert_eq!(decode::<ClientMessage>(&payload), Err(FrameError::TrailingBytes(1)));
    assert_eq!(decode::<ClientMessage>(&[9, 9, 9]), Err(FrameError::Malformed));
    assert_eq!(decode::<ClientMessage>(&[]), Err(FrameError::Malformed));
    // A Vec claiming more elements than there are bytes.
    assert_eq!(decode::<ClientMessage>(&[2, 15, 0xff, 0xff, 0xff, 0x0f]), Err(FrameError::Malformed));
}

#[test]
fn encode_refuses_oversized_messages() {
    let big = Response::Log("x".repeat(MAX_FRAME));
    assert!(matches!(encode_frame(&big), Err(FrameError::TooLarge(n)) if n > MAX_FRAME));
    let fits = Response::Log("x".repeat(MAX_FRAME - 8));
    assert!(encode_frame(&fits).is_ok());
}

#[test]
fn frame_reader_byte_by_byte() {
    let frames: Vec<Vec<u8>> = all_requests().into_iter().map(|r| client_frame(&ClientMessage::Request(r))).collect();
    let stream: Vec<u8> = frames.concat();
    let mut reader = FrameReader::new();
    let mut got = Vec::new();
    for b in &stream {
        assert_eq!(reader.feed(std::slice::from_ref(b)).unwrap(), 1);
        assert!(reader.allocated() <= FrameReader::CAPACITY);
        while let Some(p) = reader.next_frame().unwrap() {
            got.push(p);
        }
    }
    let expected: Vec<Vec<u8>> = frames.iter().map(|f| f[HEADER_LEN..].to_vec()).collect();
    assert_eq!(got, expected);
    assert_eq!(reader.buffered(), 0);
}

#[test]
fn frame_reader_many_frames_in_one_feed() {
    let stream =
        [client_frame(&ClientMessage::Request(Request::List)), client_frame(&ClientMessage::Request(Request::Info))]
            .concat();
    let mut reader = FrameReader::new();
    assert_eq!(reader.feed(&stream).unwrap(), stream.len());
    assert!(reader.next_frame().unwrap().is_some());
    assert!(reader.next_frame().unwrap().is_some());
    assert_eq!(reader.next_frame().unwrap(), None);
}

#[test]
fn frame_reader_rejects_bad_lengths_and_stays_poisoned() {
    for (header, err) in [
        (((MAX_FRAME + 1) as u32).to_le_bytes(), FrameError::TooLarge(MAX_FRAME + 1)),
        (u32::MAX.to_le_bytes(), FrameError::TooLarge(u32::MAX as usize)),
        (0u32.to_le_bytes(), FrameError::Empty),
    ] {
        let mut reader = FrameReader::new();
        // Three bytes are not yet a header.
        assert_eq!(reader.feed(&header[..3]).unwrap(), 3);
        assert_eq!(reader.feed(&header[3..]), Err(err));
        assert!(reader.is_poisoned());
        assert_eq!(reader.next_frame(), Err(err));
        assert_eq!(reader.feed(&[1, 0, 0, 0, 0]), Err(err));
        assert_eq!(reader.buffered(), 0);
    }
    // A bad header after a good frame is found in the same feed.
    let mut stream = client_frame(&ClientMessage::Request(Request::List));
    stream.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(FrameReader::new().feed(&stream), Err(FrameError::Empty));
}

#[test]
fn frame_reader_never_holds_more_than_one_largest_frame() {
    let mut reader = FrameReader::new();
    let mut big = (MAX_FRAME as u32).to_le_bytes().to_vec();
    big.resize(HEADER_LEN + MAX_FRAME, 0xAA);
    let mut stream = big.clone();
    stream.extend_from_slice(&big);
    let n = reader.feed(&stream).unwrap();
    assert_eq!(n, FrameReader::CAPACITY);
    assert_eq!(reader.allocated(), FrameReader::CAPACITY);
    assert_eq!(reader.feed(&stream[n..]).unwrap(), 0, "full: nothing more taken");
    assert_eq!(reader.next_frame().unwrap().unwrap().len(), MAX_FRAME);
    let m = reader.feed(&stream[n..]).unwrap();
    assert_eq!(n + m, stream.len());
    assert_eq!(reader.next_frame().unwrap().unwrap().len(), MAX_FRAME);
    assert_eq!(reader.buffered(), 0);
}

#[test]
fn handshake_succeeds_with_the_right_key() {
    let (mut s, mut t, result) = login(KEY);
    assert_eq!(result, Ok(()));
    assert_eq!(s.state(), SessionState::Authenticated);
    let (reqs, answers) = drive(&mut s, &mut t, 0, &client_frame(&ClientMessage::Request(Request::List)));
    assert_eq!(reqs, [Request::List]);
    assert!(answers.is_empty());
    s.respond(&Response::Ok);
    assert_eq!(server_messages(&s.take_outgoing()), [ServerMessage::Response(Response::Ok)]);
}

#[test]
fn handshake_fails_with_a_wrong_key() {
    let (s, t, result) = login([8; 32]);
    match result {
        Err(HandshakeError::Refused(e)) => assert_eq!(e.code, ErrorCode::AuthFailed),
        other => panic!("{other:?}"),
    }
    assert!(s.is_closed());
    assert_eq!(t.consecutive_failures(), 1);
}

#[test]
fn client_detects_a_server_without_the_key() {
    // The server's Welcome carries a MAC made with another key.
    let mut c = ClientHandshake::new(secret(), [2; 32]);
    let _ = c.hello().unwrap();
    c.on_challenge(ServerMessage::Challenge(Challenge { version: PROTOCOL_VERSION, server_nonce: [1; 32] })).unwrap();
    let forged = handshake::server_mac(&Secret::from_bytes([8; 32]), &[2; 32], &[1; 32]);
    assert_eq!(
        c.on_welcome(ServerMessage::Welcome(Welcome { server_mac: forged })),
        Err(HandshakeError::BadServerProof)
    );
    let genuine = handshake::server_mac(&secret(), &[2; 32], &[1; 32]);
    assert_eq!(c.on_welcome(ServerMessage::Welcome(Welcome { server_mac: genuine })), Ok(()));
    // Welcome before any challenge is out of order.
    let fresh = ClientHandshake::new(secret(), [2; 32]);
    assert_eq!(
        fresh.on_welcome(ServerMessage::Welcome(Welcome { server_mac: genuine })),
        Err(HandshakeError::Unexpected)
    );
}

#[test]
fn version_mismatch_is_reported_both_ways() {
    let mut t = AuthThrottle::new();
    // A version-2 Hello, even one with extra fields.
    for extra in [&[][..], &[1, 2, 3][..]] {
        let mut s = ServerSession::new(secret(), [1; 32], 0);
        let mut payload =
            postcard::to_allocvec(&ClientMessage::Hello(Hello { version: 2, client_nonce: [0; 32] })).unwrap();
        payload.extend_from_slice(extra);
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&payload);
        let (_, answers) = drive(&mut s, &mut t, 0, &frame);
        assert_eq!(answers.iter().map(error_code).collect::<Vec<_>>(), [ErrorCode::VersionMismatch]);
        assert!(s.is_closed());
    }
    let mut c = ClientHandshake::new(secret(), [2; 32]);
    let challenge = ServerMessage::Challenge(Challenge { version: 9, server_nonce: [1; 32] });
    assert_eq!(c.on_challenge(challenge), Err(HandshakeError::VersionMismatch { server: 9 }));
}

#[test]
fn requests_before_login_are_refused() {
    let mut t = AuthThrottle::new();
    let mut s = ServerSession::new(secret(), [1; 32], 0);
    let (reqs, answers) = drive(&mut s, &mut t, 0, &client_frame(&ClientMessage::Request(Request::List)));
    assert!(reqs.is_empty());
    assert_eq!(answers.iter().map(error_code).collect::<Vec<_>>(), [ErrorCode::BadRequest]);
    assert!(s.is_closed());
    // After Hello but before the proof, too.
    let mut s = ServerSession::new(secret(), [1; 32], 0);
    let hello = client_frame(&ClientMessage::Hello(Hello { version: PROTOCOL_VERSION, client_nonce: [2; 32] }));
    let stream = [hello, client_frame(&ClientMessage::Request(Request::Destroy(DomRef::Id(0))))].concat();
    let (reqs, answers) = drive(&mut s, &mut t, 0, &stream);
    assert!(reqs.is_empty());
    assert!(matches!(answers[0], ServerMessage::Challenge(_)));
    assert_eq!(error_code(&answers[1]), ErrorCode::BadRequest);
    // Responses are not sent on a session that never logged in.
    s.respond(&Response::Log("secret stuff".into()));
    assert!(s.outgoing().is_empty());
}

#[test]
fn protocol_errors_close_the_session() {
    let (mut s, mut t, _) = login(KEY);
    // A second Hello after the login.
    let hello = client_frame(&ClientMessage::Hello(Hello { version: 1, client_nonce: [0; 32] }));
    let (_, answers) = drive(&mut s, &mut t, 0, &hello);
    assert_eq!(error_code(&answers[0]), ErrorCode::BadRequest);
    assert!(s.is_closed());
    // An oversized frame.
    let (mut s, mut t, _) = login(KEY);
    let (_, answers) = drive(&mut s, &mut t, 0, &u32::MAX.to_le_bytes());
    assert_eq!(error_code(&answers[0]), ErrorCode::BadRequest);
    assert!(s.is_closed());
    assert_eq!(s.feed(b"more"), 4, "a closed session swallows input");
    // A truncated frame, then the peer closes.
    let (mut s, mut t, _) = login(KEY);
    let frame = client_frame(&ClientMessage::Request(Request::Dmesg { clear: false }));
    let (reqs, _) = drive(&mut s, &mut t, 0, &frame[..frame.len() - 1]);
    assert!(reqs.is_empty());
    s.peer_closed();
    assert!(s.is_closed());
    let answers = server_messages(&s.take_outgoing());
    assert_eq!(error_code(&answers[0]), ErrorCode::BadRequest);
    // Garbage in a well-formed frame.
    let (mut s, mut t, _) = login(KEY);
    let (_, answers) = drive(&mut s, &mut t, 0, &[3, 0, 0, 0, 7, 0, 0]);
    assert_eq!(answers.len(), 1);
    assert!(s.is_closed());
}

#[test]
fn unknown_requests_get_unsupported_and_the_session_goes_on() {
    let (mut s, mut t, _) = login(KEY);
    let stream =
        [&[2, 0, 0, 0, 2, REQUEST_VARIANTS as u8][..], &client_frame(&ClientMessage::Request(Request::Info))].concat();
    let (reqs, answers) = drive(&mut s, &mut t, 0, &stream);
    assert_eq!(answers.iter().map(error_code).collect::<Vec<_>>(), [ErrorCode::Unsupported]);
    assert_eq!(reqs, [Request::Info]);
    assert_eq!(s.state(), SessionState::Authenticated);
}

#[test]
fn output_backlog_stops_request_intake() {
    let (mut s, mut t, _) = login(KEY);
    let stream: Vec<u8> =
        (0..3).flat_map(|_| client_frame(&ClientMessage::Request(Request::Dmesg { clear: false }))).collect();
    assert_eq!(s.feed(&stream), stream.len());
    let r = s.next_request(0, &mut t).unwrap();
    assert_eq!(r, Request::Dmesg { clear: false });
    s.respond(&Response::Log("x".repeat(MAX_FRAME - 16)));
    s.respond(&Response::ConsoleOutput(vec![0; 100]));
    assert!(s.outgoing().len() > session::OUTPUT_HIGH_WATER);
    assert_eq!(s.next_request(0, &mut t), None);
    let n = s.outgoing().len();
    s.advance_outgoing(n);
    assert!(s.next_request(0, &mut t).is_some());
    // A response too large for a frame becomes an error.
    s.respond(&Response::Log("x".repeat(MAX_FRAME)));
    let answers = server_messages(&s.take_outgoing());
    assert_eq!(answers.iter().map(error_code).collect::<Vec<_>>(), [ErrorCode::Internal]);
}

#[test]
fn failed_logins_are_throttled() {
    let mut t = AuthThrottle::new();
    let mut attempt = |key: [u8; 32], now: u64| {
        let mut s = ServerSession::new(secret(), [1; 32], now);
        let mut c = ClientHandshake::new(Secret::from_bytes(key), [2; 32]);
        let (_, a) = drive(&mut s, &mut t, now, &c.hello().unwrap());
        let proof = match c.on_challenge(a[0].clone()) {
            Ok(p) => p,
            Err(HandshakeError::Refused(e)) => return Err(e.code),
            Err(e) => panic!("{e:?}"),
        };
        let (_, a) = drive(&mut s, &mut t, now, &proof);
        c.on_welcome(a[0].clone()).map_err(|e| match e {
            HandshakeError::Refused(e) => e.code,
            e => panic!("{e:?}"),
        })
    };
    assert_eq!(attempt([8; 32], 0), Err(ErrorCode::AuthFailed));
    // Even the right key waits out the delay.
    assert_eq!(attempt(KEY, BASE_DELAY_US - 1), Err(ErrorCode::TooManyAttempts));
    assert_eq!(attempt(KEY, BASE_DELAY_US), Ok(()));
    // Reset by the success.
    assert_eq!(attempt([8; 32], 10_000_000), Err(ErrorCode::AuthFailed));
    assert_eq!(attempt(KEY, 10_000_000 + BASE_DELAY_US), Ok(()));
}

#[test]
fn throttle_delay_doubles_and_caps() {
    let mut t = AuthThrottle::new();
    assert_eq!(t.check(0), Ok(()));
    let mut now = 1_000;
    let mut expected = BASE_DELAY_US;
    for _ in 0..12 {
        t.record_failure(now);
        assert_eq!(t.check(now), Err(expected));
        assert_eq!(t.check(now + expected - 1), Err(1));
        assert_eq!(t.check(now + expected), Ok(()));
        now += expected;
        expected = (expected * 2).min(MAX_DELAY_US);
    }
    assert_eq!(expected, MAX_DELAY_US);
    for _ in 0..100 {
        t.record_failure(u64::MAX - 5);
    }
    assert_eq!(t.check(u64::MAX - 5), Err(5), "saturates instead of wrapping");
    t.record_success();
    assert_eq!(t.check(0), Ok(()));
    assert_eq!(t.consecutive_failures(), 0);
}

#[test]
fn slow_logins_time_out() {
    let mut s = ServerSession::new(secret(), [1; 32], 1_000);
    assert!(!s.check_timeout(1_000 + HANDSHAKE_TIMEOUT_US));
    assert!(s.check_timeout(1_001 + HANDSHAKE_TIMEOUT_US));
    assert_eq!(error_code(&server_messages(s.outgoing())[0]), ErrorCode::BadRequest);
    // Logged-in sessions do not time out.
    let (mut s, _, _) = login(KEY);
    assert!(!s.check_timeout(u64::MAX));
}

#[test]
fn secrets_parse_from_hex_and_hide_in_debug() {
    let hex = "00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff";
    let s = Secret::from_hex(&format!("  {hex}\n")).unwrap();
    assert_eq!(s.as_bytes()[..4], [0x00, 0x11, 0x22, 0x33]);
    assert_eq!(s.to_hex(), hex.to_lowercase());
    assert_eq!(hex.parse::<Secret>().unwrap().as_bytes(), s.as_bytes());
    assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    assert_eq!(Secret::from_hex("abc").unwrap_err(), SecretError::WrongLength(3));
    let bad = format!("{}g", &hex[..63]);
    assert_eq!(Secret::from_hex(&bad).unwrap_err(), SecretError::NotHex(63));
    assert_eq!(SecretError::WrongLength(3).to_string(), "a key is 64 hex digits (32 bytes), found 3 characters");
    assert!(SecretError::NotHex(63).to_string().contains("character 64"));
    assert_eq!(Secret::from_hex(&"é".repeat(32)).unwrap_err(), SecretError::WrongLength(32));
    assert_eq!(Secret::from_hex(&format!("{}é", &hex[..63])).unwrap_err(), SecretError::NotHex(63));
}

#[test]
fn error_reply_display() {
    let e = ErrorReply::new(ErrorCode::NoSuchDomain, "domain 'web' does not exist");
    assert_eq!(e.to_string(), "no such domain: domain 'web' does not exist");
    assert_eq!(ErrorReply::new(ErrorCode::Busy, "").to_string(), "busy");
    assert_eq!(ErrorReply::new(ErrorCode::Internal, "a\nb\x1b").to_string(), "internal error: a b ");
}

#[test]
fn states_and_domain_names() {
    assert_eq!(DomainState(DomainState::RUNNING).xl(), "r-----");
    assert_eq!(DomainState(DomainState::PAUSED | DomainState::BLOCKED).xl(), "-bp---");
    assert_eq!(DomainState(DomainState::SHUTDOWN | DomainState::CRASHED | DomainState::DYING).xl(), "---scd");
    assert_eq!(VcpuState(VcpuState::RUNNING).xl(), "r--");
    assert_eq!(VcpuState(VcpuState::PAUSED).xl(), "--p");
    assert_eq!(DomRef::parse("12"), DomRef::Id(12));
    assert_eq!(DomRef::parse("web1"), DomRef::Name("web1".into()));
    assert_eq!(DomRef::parse("+1"), DomRef::Name("+1".into()));
    assert_eq!(DomRef::parse("99999999999"), DomRef::Name("99999999999".into()));
    assert!(DomRef::Id(3).matches(3, "x") && DomRef::Name("x".into()).matches(9, "x"));
    assert_eq!(DomRef::Id(3).to_string(), "3");
}

#[test]
fn uploads_are_checked() {
    let data = b"hello, kernel".to_vec();
    let meta = |name: &str, data: &[u8]| FileMeta {
        name: name.into(),
        len: data.len() as u64,
        sha256: FileHasher::digest(data),
    };
    let mut u = Upload::new(vec![meta("k", &data), meta("r", b"")], 1 << 20).unwrap();
    assert_eq!(u.accept(0, 0, &data[..5]).map_err(|e| e.code), Ok(()));
    assert_eq!(u.accept(0, 0, &data[..5]).unwrap_err().code, ErrorCode::BadRequest, "repeated offset");
    assert!(u.accept(0, 5, &data[5..]).is_ok());
    assert!(u.accept(0, data.len() as u64, b"x").is_err(), "past the end");
    assert!(u.accept(2, 0, b"").is_err(), "no such file");
    assert!(u.accept(1, 0, &vec![0; MAX_CHUNK + 1]).is_err(), "chunk too large");
    assert_eq!(u.finish().unwrap().len(), 2);
    // Incomplete, or damaged.
    let u = Upload::new(vec![meta("k", &data)], 1 << 20).unwrap();
    assert!(u.finish().unwrap_err().message.contains("incomplete"));
    let mut u = Upload::new(vec![meta("k", &data)], 1 << 20).unwrap();
    let mut damaged = data.clone();
    damaged[0] ^= 1;
    u.accept(0, 0, &damaged).unwrap();
    assert!(u.finish().unwrap_err().message.contains("damaged"));
    // Announcements.
    assert_eq!(Upload::new(vec![meta("k", &data)], 4).unwrap_err().code, ErrorCode::NoMemory);
    assert!(Upload::new(vec![meta("k", &data), meta("k", &data)], 1 << 20).is_err());
    assert!(Upload::new(vec![meta("", &data)], 1 << 20).is_err());
    assert!(Upload::new((0..9).map(|i| meta(&i.to_string(), b"")).collect(), 1 << 20).is_err());
    let huge = FileMeta { name: "h".into(), len: u64::MAX, sha256: [0; 32] };
    assert!(Upload::new(vec![huge.clone(), FileMeta { name: "i".into(), ..huge }], u64::MAX - 1).is_err());
}
