//! The server against `ferrite-nbd`'s client over real loopback TCP, against
//! hostile clients, and against QEMU's NBD tools both ways.

use super::*;
use ferrite_nbd::cmd_flags::FUA;
use std::thread::JoinHandle;

const MIB: u64 = 1 << 20;

/// A scratch folder for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrite-nbd-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An image of `size` bytes whose byte at offset i is (i / 512) as u8.
fn image(dir: &Path, size: u64) -> PathBuf {
    let path = dir.join("disk.img");
    let data: Vec<u8> = (0..size).map(|i| (i / 512) as u8).collect();
    std::fs::write(&path, data).unwrap();
    path
}

/// Serves `connections` clients, one after the other, on a fresh port.
fn serve(path: &Path, read_only: bool, export: &str, connections: usize) -> (SocketAddr, JoinHandle<Vec<Result<()>>>) {
    let image = Image::open(path, read_only).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let export = export.to_string();
    let handle = std::thread::spawn(move || {
        (0..connections)
            .map(|_| {
                let (stream, _) = listener.accept().unwrap();
                serve_connection(stream, &image, &export)
            })
            .collect()
    });
    (addr, handle)
}

#[test]
fn read_write_flush_trim_and_disconnect() {
    let dir = scratch("rw");
    let path = image(&dir, 4 * MIB);
    let (addr, server) = serve(&path, false, "disk", 1);
    let mut c = Client::connect(addr, "disk").unwrap();
    let e = c.export();
    assert_eq!(e.size, 4 * MIB);
    assert!(!e.read_only() && e.can_flush() && e.can_fua() && e.can_trim());

    let (err, data) = c.call(Command::Read, 0, 1024, 1024, &[]).unwrap();
    assert_eq!(err, 0);
    assert_eq!(data, [vec![2u8; 512], vec![3u8; 512]].concat());

    let pattern: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(c.call(Command::Write, 0, 12_345, pattern.len() as u32, &pattern).unwrap().0, 0);
    assert_eq!(c.call(Command::Write, FUA, 3 * MIB, 4, b"fua!").unwrap().0, 0);
    assert_eq!(c.call(Command::Flush, 0, 0, 0, &[]).unwrap().0, 0);
    let (err, back) = c.call(Command::Read, 0, 12_345, pattern.len() as u32, &[]).unwrap();
    assert_eq!(err, 0);
    assert_eq!(back, pattern);

    // TRIM zeroes (unaligned edges included).
    assert_eq!(c.call(Command::Trim, 0, MIB + 100, 200_000, &[]).unwrap().0, 0);
    let (_, z) = c.call(Command::Read, 0, MIB + 100, 200_000, &[]).unwrap();
    assert!(z.iter().all(|&b| b == 0));
    let (_, edge) = c.call(Command::Read, 0, MIB + 99, 1, &[]).unwrap();
    assert_eq!(edge, [((MIB + 99) / 512) as u8]);
    // The whole disk, most of it already zero or data.
    assert_eq!(c.call(Command::Trim, FUA, 0, (4 * MIB) as u32, &[]).unwrap().0, 0);

    c.disconnect().unwrap();
    let results = server.join().unwrap();
    assert!(results[0].is_ok(), "{:?}", results[0]);
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk.len() as u64, 4 * MIB, "the image keeps its size");
    assert!(on_disk.iter().all(|&b| b == 0));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn writes_reach_the_file() {
    let dir = scratch("file");
    let path = image(&dir, MIB);
    let (addr, server) = serve(&path, false, "", 1);
    let mut c = Client::connect(addr, "").unwrap();
    assert_eq!(c.call(Command::Write, FUA, 4096, 8, b"ferrite!").unwrap().0, 0);
    c.disconnect().unwrap();
    server.join().unwrap().pop().unwrap().unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(&on_disk[4096..4104], b"ferrite!");
    assert_eq!(on_disk[4104], 8);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn read_only_exports_refuse_writes() {
    let dir = scratch("ro");
    let path = image(&dir, MIB);
    let before = std::fs::read(&path).unwrap();
    let (addr, server) = serve(&path, true, "cd", 1);
    let mut c = Client::connect(addr, "cd").unwrap();
    assert!(c.export().read_only());
    assert!(!c.export().can_trim());
    assert_eq!(c.call(Command::Write, 0, 0, 512, &[0xff; 512]).unwrap().0, errno::EPERM);
    assert_eq!(c.call(Command::Trim, 0, 0, 512, &[]).unwrap().0, errno::EINVAL);
    assert_eq!(c.call(Command::Flush, 0, 0, 0, &[]).unwrap().0, 0);
    let (err, data) = c.call(Command::Read, 0, 0, 512, &[]).unwrap();
    assert_eq!((err, data), (0, vec![0u8; 512]));
    c.disconnect().unwrap();
    server.join().unwrap().pop().unwrap().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), before);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn out_of_range_requests_fail_and_the_session_goes_on() {
    let dir = scratch("range");
    let path = image(&dir, MIB);
    let (addr, server) = serve(&path, false, "", 1);
    let mut c = Client::connect(addr, "").unwrap();
    assert_eq!(c.call(Command::Read, 0, MIB - 511, 512, &[]).unwrap().0, errno::EINVAL);
    assert_eq!(c.call(Command::Read, 0, u64::MAX - 10, 512, &[]).unwrap().0, errno::EINVAL);
    assert_eq!(c.call(Command::Read, 0, 0, ferrite_nbd::MAX_REQUEST_BYTES + 1, &[]).unwrap().0, errno::EINVAL);
    // The spec's error for a write past the end is ENOSPC.
    assert_eq!(c.call(Command::Write, 0, MIB, 4, b"over").unwrap().0, errno::ENOSPC);
    assert_eq!(c.call(Command::Trim, 0, MIB, 512, &[]).unwrap().0, errno::EINVAL);
    // Unknown command flags and commands.
    assert_eq!(c.call(Command::Read, 0x8000, 0, 512, &[]).unwrap().0, errno::EINVAL);
    let mut unknown = ferrite_nbd::encode_request(9, Command::Read, 0, 0, 512);
    unknown[7] = 7; // NBD_CMD_BLOCK_STATUS
    c.stream.write_all(&unknown).unwrap();
    let (reply, _) = c.reply(0).unwrap();
    assert_eq!((reply.error, reply.cookie), (errno::EINVAL, 9));
    // Still serving.
    assert_eq!(c.call(Command::Read, 0, MIB - 512, 512, &[]).unwrap(), (0, vec![(MIB / 512 - 1) as u8; 512]));
    c.disconnect().unwrap();
    server.join().unwrap().pop().unwrap().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn pipelined_requests_are_answered_in_order_with_their_cookies() {
    let dir = scratch("pipe");
    let path = image(&dir, 2 * MIB);
    let (addr, server) = serve(&path, false, "", 1);
    let mut c = Client::connect(addr, "").unwrap();
    // 64 writes of 8 KiB and the reads of the same blocks, in one go.
    let mut expected = Vec::new();
    for i in 0..64u64 {
        let block = vec![i as u8 ^ 0xa5; 8192];
        c.send(1000 + i, Command::Write, 0, i * 16384, 8192, &block).unwrap();
        c.send(2000 + i, Command::Read, 0, i * 16384, 8192, &[]).unwrap();
        c.send(3000 + i, Command::Read, 0, 3 * MIB, 512, &[]).unwrap(); // out of range
        expected.push((1000 + i, 0, vec![]));
        expected.push((2000 + i, 8192, block));
        expected.push((3000 + i, 0, vec![]));
    }
    c.send(4000, Command::Flush, 0, 0, 0, &[]).unwrap();
    for (cookie, read_len, data) in expected {
        let (reply, got) = c.reply(read_len).unwrap();
        assert_eq!(reply.cookie, cookie);
        if cookie >= 3000 {
            assert_eq!(reply.error, errno::EINVAL);
        } else {
            assert_eq!(reply.error, 0);
            assert_eq!(got, data);
        }
    }
    assert_eq!(c.reply(0).unwrap().0.cookie, 4000);
    c.disconnect().unwrap();
    server.join().unwrap().pop().unwrap().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unknown_exports_are_refused() {
    let dir = scratch("unknown");
    let path = image(&dir, MIB);
    let (addr, server) = serve(&path, false, "disk", 1);
    let e = Client::connect(addr, "other").err().unwrap();
    assert_eq!(e.to_string(), "the server has no export named 'other'");
    // The client aborted softly; the server saw a clean end.
    server.join().unwrap().pop().unwrap().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn hostile_clients_do_not_crash_the_server() {
    let dir = scratch("hostile");
    let path = image(&dir, MIB);
    let before = std::fs::read(&path).unwrap();
    let handshake_then = |extra: &[u8]| {
        let mut v = Vec::new();
        v.extend_from_slice(&3u32.to_be_bytes());
        let mut go = 0u32.to_be_bytes().to_vec();
        go.extend_from_slice(&0u16.to_be_bytes());
        let mut opt = ferrite_nbd::magic::IHAVEOPT.to_be_bytes().to_vec();
        opt.extend_from_slice(&ferrite_nbd::opt::GO.to_be_bytes());
        opt.extend_from_slice(&(go.len() as u32).to_be_bytes());
        opt.extend(go);
        v.extend(opt);
        v.extend_from_slice(extra);
        v
    };
    let mut rng = 0x1234_5678_9abc_def1u64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect()
    };
    let huge_write = ferrite_nbd::encode_request(1, Command::Write, 0, 0, u32::MAX);
    let mut half_write = ferrite_nbd::encode_request(1, Command::Write, 0, 0, 4096).to_vec();
    half_write.extend_from_slice(&[0xee; 100]);
    let streams: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        random(10_000),
        handshake_then(&random(5000)),
        handshake_then(&huge_write),
        handshake_then(&half_write),
        handshake_then(&ferrite_nbd::encode_request(1, Command::Read, 0, 0, 512)[..20]),
        vec![],
        [3u32.to_be_bytes().to_vec(), random(3000)].concat(),
    ];
    let (addr, server) = serve(&path, false, "", streams.len() + 1);
    for s in &streams {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The server may close early; errors writing are fine.
        let _ = conn.write_all(s);
        let _ = conn.shutdown(std::net::Shutdown::Write);
        // Drain until the server closes (it must not hang).
        let mut sink = Vec::new();
        let r = conn.read_to_end(&mut sink);
        assert!(r.is_ok() || r.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset), "{r:?}");
    }
    // A well-behaved client is still served afterwards.
    let mut c = Client::connect(addr, "").unwrap();
    assert_eq!(c.call(Command::Read, 0, 0, 512, &[]).unwrap().0, 0);
    c.disconnect().unwrap();
    let results = server.join().unwrap();
    assert!(results.iter().take(streams.len()).any(|r| r.is_err()));
    assert!(results.last().unwrap().is_ok());
    assert_eq!(std::fs::read(&path).unwrap(), before, "garbage wrote nothing");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn arguments_and_the_ready_line() {
    let a = |v: &[&str]| parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let s = a(&["disk.img"]).unwrap();
    assert_eq!(
        s,
        ServeArgs {
            file: "disk.img".into(),
            listen: DEFAULT_LISTEN.into(),
            export: String::new(),
            read_only: false,
            once: false,
            vsock: false
        }
    );
    let s = a(&["x.img", "--vsock", "--once"]).unwrap();
    assert!(s.vsock && s.once);
    assert!(a(&["x.img", "--vsock", "--listen", "0.0.0.0:1"]).is_err(), "--vsock listens nowhere");
    let token = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0, 1, 2, 3, 4, 5, 6, 0xff];
    assert_eq!(token_hex(&token), "0123456789abcdef00010203040506ff");
    assert_eq!(parse_token(&format!(" {}\n", token_hex(&token))).unwrap(), token);
    assert!(parse_token("0123").is_err());
    assert!(parse_token(&"g".repeat(32)).is_err());
    assert!(parse_token(&"+1".repeat(16)).is_err());
    assert!(ready_over_vsock("nbd-serve: serving /d.img as export 'xvda' over vsock 2:7071\n"));
    assert!(!ready_over_vsock("nbd-serve: serving /d.img as export 'xvda' over vsock 2:7071"), "half a line");
    assert!(!ready_over_vsock("nbd-serve: cannot reach the hypervisor\n"));
    let s = a(&["--listen=0.0.0.0:0", "x.img", "--export", "xvda", "--read-only", "--once"]).unwrap();
    assert_eq!((s.listen.as_str(), s.export.as_str(), s.read_only, s.once), ("0.0.0.0:0", "xvda", true, true));
    assert!(a(&[]).is_err());
    assert!(a(&["a", "b"]).is_err());
    assert!(a(&["a", "--frob"]).is_err());
    assert!(a(&["a", "--export"]).is_err());
    assert!(a(&["a", "--export", &"n".repeat(5000)]).is_err());

    let addr: SocketAddr = "127.0.0.1:40123".parse().unwrap();
    let line = ready_line(Path::new("/x/disk on y.img"), "a on b", addr);
    assert_eq!(line, "nbd-serve: serving /x/disk on y.img as export 'a on b' on 127.0.0.1:40123");
    assert_eq!(ready_port(&format!("noise\n{line}\n")), Some(40123));
    assert_eq!(ready_port(&line[..line.len() - 2]), None, "half a line is not read");
    assert_eq!(ready_port("nbd-serve: cannot open x\n"), None);
}

/// `--vsock`'s way, over loopback TCP: the server connects, sends the
/// attach hello, then serves NBD on the same stream as the client side
/// (the hypervisor) negotiates after reading the hello.
#[test]
fn an_attached_server_says_its_token_then_serves() {
    let dir = scratch("attached");
    let path = image(&dir, MIB);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let token = [0x42; ferrite_nbd::ATTACH_TOKEN_BYTES];
    let image = Image::open(&path, false).unwrap();
    let server = std::thread::spawn(move || {
        let stream = TcpStream::connect(addr).unwrap();
        let mut writer = stream.try_clone().unwrap();
        writer.write_all(&ferrite_nbd::encode_attach_hello(&token)).unwrap();
        serve_stream(stream, writer, &image, "xvda")
    });
    let (mut stream, _) = listener.accept().unwrap();
    let mut hello = [0u8; ferrite_nbd::ATTACH_HELLO_BYTES];
    stream.read_exact(&mut hello).unwrap();
    assert_eq!(ferrite_nbd::decode_attach_hello(&hello), Ok(Some(token)));
    let mut c = Client::over(stream, "xvda").unwrap();
    assert_eq!(c.export().size, MIB);
    assert_eq!(c.call(Command::Write, 0, 512, 3, b"abc").unwrap().0, 0);
    let (err, data) = c.call(Command::Read, 0, 0, 1024, &[]).unwrap();
    assert_eq!(err, 0);
    assert_eq!(&data[512..515], b"abc");
    c.disconnect().unwrap();
    server.join().unwrap().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

// ---- interoperability with QEMU's NBD tools ---------------------------------

/// Whether `program` is installed. Missing, the test is skipped (with a
/// message) unless `FERRITE_REQUIRE_GUESTS` is set, which makes it fail,
/// as the QEMU tests treat missing packages.
fn have(test: &str, program: &str) -> bool {
    if crate::deps::find_program(program).is_some() {
        return true;
    }
    let required = std::env::var("FERRITE_REQUIRE_GUESTS").is_ok_and(|v| !v.trim().is_empty() && v.trim() != "0");
    if required {
        panic!("[{test}] {program} (Debian package qemu-utils) is not installed and FERRITE_REQUIRE_GUESTS is set");
    }
    eprintln!(
        "[{test}] SKIPPED (passes without running): {program} is not installed (apt-get install qemu-utils)\n\
         [{test}] set FERRITE_REQUIRE_GUESTS=1 to make this a failure"
    );
    false
}

fn run_qemu_io(args: &[&str]) -> (bool, String) {
    let out = Process::new("qemu-io").args(args).output().expect("run qemu-io");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // qemu-io reports failed commands in its output, not always its status.
    let ok = out.status.success() && !text.contains("failed") && !text.contains("error");
    (ok, text)
}

#[test]
fn qemu_io_against_this_server() {
    if !have("qemu_io_against_this_server", "qemu-io") {
        return;
    }
    let dir = scratch("qemu-io");
    let path = image(&dir, 4 * MIB);
    let (addr, server) = serve(&path, false, "xvda", 1);
    let url = format!("nbd://{addr}/xvda");
    let (ok, text) = run_qemu_io(&[
        "-f",
        "raw",
        "-c",
        "write -P 0x5a 0 64k",
        "-c",
        "read -P 0x5a 0 64k",
        "-c",
        "write -P 0xc3 -f 1m 1m",
        "-c",
        "flush",
        "-c",
        "discard 2m 64k",
        "-c",
        "read -P 0 2m 64k",
        "-c",
        "read -P 0xc3 1m 1m",
        &url,
    ]);
    assert!(ok, "qemu-io failed:\n{text}");
    server.join().unwrap().pop().unwrap().unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk[..65536].iter().all(|&b| b == 0x5a));
    assert!(on_disk[MIB as usize..2 * MIB as usize].iter().all(|&b| b == 0xc3));
    assert!(on_disk[2 * MIB as usize..2 * MIB as usize + 65536].iter().all(|&b| b == 0));
    assert_eq!(on_disk[3 * MIB as usize], (3 * MIB / 512) as u8, "the rest is untouched");

    // Read-only: qemu-io sees the flag and refuses to write.
    let (addr, server) = serve(&path, true, "xvda", 1);
    let (ok, text) = run_qemu_io(&["-f", "raw", "-r", "-c", "read -P 0x5a 0 64k", &format!("nbd://{addr}/xvda")]);
    assert!(ok, "qemu-io failed:\n{text}");
    server.join().unwrap().pop().unwrap().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `qemu-nbd --fork` on `path`; it exits after its one client.
fn qemu_nbd(path: &Path, extra: &[&str]) -> (SocketAddr, PathBuf) {
    let port = free_port();
    let pid_file = path.with_extension(format!("{port}.pid"));
    let status = Process::new("qemu-nbd")
        .args(["--fork", "-f", "raw", "-b", "127.0.0.1", "-p", &port.to_string(), "-x", "exp"])
        .args(extra)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(path)
        .status()
        .expect("run qemu-nbd");
    assert!(status.success(), "qemu-nbd failed to start");
    (SocketAddr::from(([127, 0, 0, 1], port)), pid_file)
}

fn stop(pid_file: &Path) {
    if let Ok(pid) = std::fs::read_to_string(pid_file) {
        if Path::new(&format!("/proc/{}", pid.trim())).exists() {
            let _ = Process::new("kill").arg(pid.trim()).status();
        }
    }
}

#[test]
fn this_client_against_qemu_nbd() {
    if !have("this_client_against_qemu_nbd", "qemu-nbd") {
        return;
    }
    let dir = scratch("qemu-nbd");
    let path = image(&dir, 4 * MIB);
    let (addr, pid_file) = qemu_nbd(&path, &[]);
    let result = (|| -> Result<()> {
        let mut c = Client::connect(addr, "exp")?;
        let e = c.export();
        assert_eq!(e.size, 4 * MIB);
        assert!(!e.read_only() && e.can_flush());
        let block = vec![0x77u8; 65536];
        assert_eq!(c.call(Command::Write, if e.can_fua() { FUA } else { 0 }, MIB, 65536, &block)?.0, 0);
        assert_eq!(c.call(Command::Flush, 0, 0, 0, &[])?, (0, vec![]));
        assert_eq!(c.call(Command::Read, 0, MIB, 65536, &[])?, (0, block));
        assert_eq!(c.call(Command::Read, 0, 4 * MIB, 512, &[])?.0, errno::EINVAL);
        if e.can_trim() {
            assert_eq!(c.call(Command::Trim, 0, 2 * MIB, 65536, &[])?.0, 0);
        }
        c.disconnect()?;
        Ok(())
    })();
    stop(&pid_file);
    result.unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk[MIB as usize..MIB as usize + 65536].iter().all(|&b| b == 0x77));

    // Read-only and an unknown name.
    let (addr, pid_file) = qemu_nbd(&path, &["--read-only", "--persistent"]);
    let result = (|| -> Result<()> {
        let e = Client::connect(addr, "nope").err().context("an unknown export was accepted")?;
        assert_eq!(e.to_string(), "the server has no export named 'nope'");
        let mut c = Client::connect(addr, "exp")?;
        assert!(c.export().read_only());
        // qemu-nbd 7.2 answers EINVAL where the spec suggests EPERM.
        assert_ne!(c.call(Command::Write, 0, 0, 512, &[1; 512])?.0, 0);
        c.disconnect()?;
        Ok(())
    })();
    stop(&pid_file);
    result.unwrap();
    std::fs::remove_dir_all(&dir).ok();
}
