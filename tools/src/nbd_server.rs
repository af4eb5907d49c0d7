//! `ferrite nbd-serve`: serves one raw image file over NBD, the way
//! `ferrite xl create` hands a `file:` disk to the hypervisor (which is the
//! NBD client, over its own TCP/IP stack).
//!
//! The protocol logic is `ferrite-nbd` (the handshake, request and reply
//! headers, the checks of a request against the export); this module adds
//! the sockets and the file: READ and WRITE with `pread`/`pwrite`, FLUSH as
//! `fdatasync`, FUA as `fdatasync` before the reply, TRIM as zeroing the
//! blocks of the range that are not already zero (holes are left alone, so
//! a sparse image stays sparse; punching holes needs `fallocate(2)`, which
//! std does not offer and this crate keeps free of `unsafe`). Requests are
//! carried out in the order they arrive and each reply carries its
//! request's cookie, so a client may pipeline as many as it likes.
//!
//! [`spawn_background_server`] starts `ferrite nbd-serve --once` as a
//! detached process (its own process group, output to a log file), like
//! xl's background helpers: it outlives the `xl create` that started it and
//! exits when its one client (the hypervisor) disconnects, which it does
//! when the domain is destroyed.
//!
//! In a Ferrite dom0, which may have no IP network, the server connects
//! instead (`--vsock`): to the hypervisor's vsock NBD port, where it sends
//! `ferrite-nbd`'s attach hello with the token `xl create` gave it (in the
//! environment, [`TOKEN_ENV`], so no other user of dom0 can read it from
//! the process list) and then serves NBD on that stream as on TCP
//! ([`spawn_background_vsock_server`]).

use anyhow::{bail, Context, Result};
use ferrite_nbd::{
    check_request, decode_request, encode_simple_reply, errno, flags, Command, Export, NbdError, ServerHandshake,
    REQUEST_HEADER_BYTES,
};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const USAGE: &str = "\
    ferrite nbd-serve FILE [--listen ADDR:PORT | --vsock] [--export NAME] [--read-only] [--once]
        Serve the raw image FILE over NBD (fixed newstyle; READ, WRITE, FLUSH,
        FUA, TRIM) on ADDR:PORT (default 127.0.0.1:10809; port 0 picks a free
        one) as export NAME (default: the empty name, the default export).
        Prints `nbd-serve: serving FILE as export 'NAME' on ADDR:PORT` once
        listening. --read-only refuses writes (EPERM); --once exits when the
        first client disconnects, or after 120 s if none came (how `xl
        create`'s background server ends).
        Several clients are served at once otherwise.
        --vsock (in a Ferrite dom0): connect to the hypervisor over vsock
        (CID 2, port 7071) instead of listening, say the token in
        $FERRITE_NBD_TOKEN (32 hex digits; what `xl create` does), and
        serve that one connection.
";

/// The environment variable that hands `--vsock` its attach token.
pub const TOKEN_ENV: &str = "FERRITE_NBD_TOKEN";
/// The hypervisor's vsock address for dom0's NBD servers.
pub const VSOCK_HOST_CID: u32 = 2;
pub const VSOCK_NBD_PORT: u32 = 7071;

/// The address `nbd-serve` listens on without `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:10809";

/// What the line `nbd-serve` prints once listening starts with.
const READY_PREFIX: &str = "nbd-serve: serving ";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeArgs {
    pub file: PathBuf,
    pub listen: String,
    pub export: String,
    pub read_only: bool,
    pub once: bool,
    /// Connect to the hypervisor over vsock rather than listen.
    pub vsock: bool,
}

/// Parses the arguments after `nbd-serve`.
pub fn parse_args(args: &[String]) -> Result<ServeArgs> {
    let mut file = None;
    let mut listen = DEFAULT_LISTEN.to_string();
    let mut export = String::new();
    let mut read_only = false;
    let mut once = false;
    let mut vsock = false;
    let mut listen_given = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value =
            |name: &str| inline.clone().or_else(|| it.next().cloned()).with_context(|| format!("{name} needs a value"));
        match flag {
            "--listen" => {
                listen = value("--listen")?;
                listen_given = true;
            }
            "--vsock" => vsock = true,
            "--export" => export = value("--export")?,
            "--read-only" => read_only = true,
            "--once" => once = true,
            f if f.starts_with('-') && f != "-" => bail!("unknown option {arg:?} for `ferrite nbd-serve`"),
            _ if file.is_none() => file = Some(PathBuf::from(arg)),
            _ => bail!("`ferrite nbd-serve` serves one FILE; unexpected {arg:?}"),
        }
    }
    if vsock && listen_given {
        bail!("--vsock connects to the hypervisor; it listens nowhere, so --listen does not go with it");
    }
    if export.len() > ferrite_nbd::MAX_NAME_BYTES || export.contains('\0') {
        bail!("--export: an NBD export name is at most 4096 bytes, without NUL");
    }
    Ok(ServeArgs {
        file: file.context("`ferrite nbd-serve` needs the image FILE to serve")?,
        listen,
        export,
        read_only,
        once,
        vsock,
    })
}

/// Parses an attach token: 32 hex digits.
pub fn parse_token(text: &str) -> Result<[u8; ferrite_nbd::ATTACH_TOKEN_BYTES]> {
    let text = text.trim();
    let mut token = [0u8; ferrite_nbd::ATTACH_TOKEN_BYTES];
    if text.len() != 2 * token.len() || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("an attach token is {} hex digits", 2 * token.len());
    }
    for (i, byte) in token.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)?;
    }
    Ok(token)
}

/// A token as [`parse_token`] reads it.
pub fn token_hex(token: &[u8; ferrite_nbd::ATTACH_TOKEN_BYTES]) -> String {
    token.iter().map(|b| format!("{b:02x}")).collect()
}

/// One image as an export.
pub struct Image {
    file: File,
    export: Export,
}

impl Image {
    /// Opens `path` (read-only when `read_only`); its size is the export's.
    pub fn open(path: &Path, read_only: bool) -> Result<Image> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // Seek rather than metadata: a block device's metadata length is 0.
        let size = file.seek(SeekFrom::End(0)).with_context(|| format!("cannot size {}", path.display()))?;
        let mut f = flags::HAS_FLAGS | flags::SEND_FLUSH | flags::SEND_FUA;
        if read_only {
            f |= flags::READ_ONLY;
        } else {
            f |= flags::SEND_TRIM;
        }
        Ok(Image { file, export: Export { size, flags: f } })
    }

    pub fn export(&self) -> Export {
        self.export
    }
}

/// How long a `--once` server waits for its client.
const ONCE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// `ferrite nbd-serve`.
pub fn main(args: &ServeArgs) -> Result<()> {
    let image = Arc::new(Image::open(&args.file, args.read_only)?);
    if args.vsock {
        return main_vsock(args, &image);
    }
    let listener = TcpListener::bind(&args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("{}", ready_line(&args.file, &args.export, addr));
    io::stdout().flush()?;
    let export = Arc::new(args.export.clone());
    let connected = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if args.once {
        // Started for one client that may never come (`xl create` failed
        // before the hypervisor connected): do not linger.
        let connected = connected.clone();
        std::thread::spawn(move || {
            std::thread::sleep(ONCE_CONNECT_TIMEOUT);
            if !connected.load(std::sync::atomic::Ordering::SeqCst) {
                eprintln!("nbd-serve: no client within {} s; exiting", ONCE_CONNECT_TIMEOUT.as_secs());
                std::process::exit(1);
            }
        });
    }
    loop {
        let (stream, peer) = listener.accept().context("accept")?;
        connected.store(true, std::sync::atomic::Ordering::SeqCst);
        eprintln!("nbd-serve: {peer} connected");
        if args.once {
            let result = serve_connection(stream, &image, &export);
            report(peer, &result);
            return result;
        }
        let (image, export) = (image.clone(), export.clone());
        std::thread::spawn(move || {
            let result = serve_connection(stream, &image, &export);
            report(peer, &result);
        });
    }
}

/// `--vsock`: one connection, made to the hypervisor.
fn main_vsock(args: &ServeArgs, image: &Image) -> Result<()> {
    let token = std::env::var(TOKEN_ENV).with_context(|| format!("--vsock needs the attach token in ${TOKEN_ENV}"))?;
    let token = parse_token(&token).with_context(|| format!("${TOKEN_ENV}"))?;
    let stream = vsock::VsockStream::connect_with_cid_port(VSOCK_HOST_CID, VSOCK_NBD_PORT)
        .with_context(|| format!("cannot reach the hypervisor's NBD port over vsock ({VSOCK_HOST_CID}:{VSOCK_NBD_PORT})"))?;
    let mut writer = stream.try_clone()?;
    writer.write_all(&ferrite_nbd::encode_attach_hello(&token))?;
    println!("{READY_PREFIX}{} as export '{}' over vsock {VSOCK_HOST_CID}:{VSOCK_NBD_PORT}", args.file.display(), args.export);
    io::stdout().flush()?;
    let result = serve_stream(stream, writer, image, &args.export);
    match &result {
        Ok(()) => eprintln!("nbd-serve: the hypervisor disconnected"),
        Err(e) => eprintln!("nbd-serve: {e:#}"),
    }
    result
}

fn ready_line(file: &Path, export: &str, addr: SocketAddr) -> String {
    format!("{READY_PREFIX}{} as export '{export}' on {addr}", file.display())
}

fn report(peer: SocketAddr, result: &Result<()>) {
    match result {
        Ok(()) => eprintln!("nbd-serve: {peer} disconnected"),
        Err(e) => eprintln!("nbd-serve: {peer}: {e:#}"),
    }
}

/// Serves one client until it disconnects: the handshake, then requests.
/// `Ok` when the client leaves cleanly (`NBD_CMD_DISC`, `NBD_OPT_ABORT`, or
/// closing the connection between messages); an error for a protocol
/// violation or a broken connection.
pub fn serve_connection(stream: TcpStream, image: &Image, export_name: &str) -> Result<()> {
    stream.set_nodelay(true).ok();
    let writer = stream.try_clone()?;
    serve_stream(stream, writer, image, export_name)
}

/// [`serve_connection`] on any byte stream (`reader` and `writer` its two
/// directions).
pub fn serve_stream<R: Read, W: Write>(mut reader: R, writer: W, image: &Image, export_name: &str) -> Result<()> {
    let mut writer = BufWriter::with_capacity(256 << 10, writer);
    let mut handshake = ServerHandshake::single(export_name, image.export);
    let mut received: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        handshake.poll_output(&mut out);
        writer.write_all(&out)?;
        writer.flush()?;
        out.clear();
        if handshake.done().is_some() {
            break;
        }
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            return Ok(()); // the client left during the negotiation
        }
        received.extend_from_slice(&chunk[..n]);
        match handshake.feed(&received) {
            Ok(used) => {
                received.drain(..used);
            }
            Err(NbdError::ClientAborted) => {
                handshake.poll_output(&mut out);
                writer.write_all(&out)?;
                writer.flush()?;
                return Ok(());
            }
            Err(e) => {
                // A last reply, if any, then a hard disconnect.
                handshake.poll_output(&mut out);
                let _ = writer.write_all(&out).and_then(|()| writer.flush());
                return Err(e).context("NBD handshake");
            }
        }
    }
    // Whatever followed the handshake is the first request's.
    let reader = BufReader::with_capacity(256 << 10, io::Cursor::new(received).chain(reader));
    transmission(reader, writer, image)
}

fn transmission<R: Read, W: Write>(mut reader: BufReader<R>, mut writer: W, image: &Image) -> Result<()> {
    let mut header = [0u8; REQUEST_HEADER_BYTES];
    let mut data: Vec<u8> = Vec::new();
    loop {
        // Replies wait in the buffer while more requests are already here.
        if reader.buffer().is_empty() {
            writer.flush()?;
        }
        if !read_header(&mut reader, &mut header)? {
            writer.flush()?;
            return Ok(()); // closed without NBD_CMD_DISC, between requests
        }
        let request = match decode_request(&header) {
            Ok(Some(r)) => r,
            Ok(None) => unreachable!("a whole header was read"),
            Err(e) => {
                writer.flush()?;
                return Err(e).context("NBD request");
            }
        };
        let payload = request.payload_len() as usize;
        data.clear();
        if payload > 0 {
            data.resize(payload, 0);
            reader.read_exact(&mut data).context("reading a write request's data")?;
        }
        if let Err(error) = check_request(&request, &image.export) {
            writer.write_all(&encode_simple_reply(error, request.cookie))?;
            continue;
        }
        let fua = request.flags & ferrite_nbd::cmd_flags::FUA != 0;
        let offset = request.offset;
        let result = match request.command {
            Some(Command::Disc) => {
                // Every earlier request has been answered (in order).
                writer.flush()?;
                return Ok(());
            }
            Some(Command::Read) => {
                data.resize(request.length as usize, 0);
                match image.file.read_exact_at(&mut data, offset) {
                    Ok(()) => {
                        writer.write_all(&encode_simple_reply(0, request.cookie))?;
                        writer.write_all(&data)?;
                        continue;
                    }
                    Err(e) => Err(e),
                }
            }
            Some(Command::Write) => image.file.write_all_at(&data, offset).and_then(|()| sync_if(&image.file, fua)),
            Some(Command::Flush) => image.file.sync_data(),
            Some(Command::Trim) => zero_range(&image.file, offset, request.length.into(), &mut data)
                .and_then(|()| sync_if(&image.file, fua)),
            None => unreachable!("check_request refuses unknown commands"),
        };
        let error = match result {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("nbd-serve: {:?} of {} bytes at {offset}: {e}", request.command, request.length);
                io_errno(&e)
            }
        };
        writer.write_all(&encode_simple_reply(error, request.cookie))?;
    }
}

/// Reads one request header; `false` if the stream ended cleanly before it.
fn read_header<R: Read>(reader: &mut R, header: &mut [u8]) -> Result<bool> {
    let mut got = 0;
    while got < header.len() {
        match reader.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => bail!("the client closed the connection in the middle of a request header"),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

fn sync_if(file: &File, fua: bool) -> io::Result<()> {
    if fua {
        file.sync_data()
    } else {
        Ok(())
    }
}

/// TRIM: zeroes `length` bytes at `offset`, writing only the 64 KiB blocks
/// that are not zero already (reading a hole is cheap and leaves it a hole).
fn zero_range(file: &File, offset: u64, length: u64, buf: &mut Vec<u8>) -> io::Result<()> {
    const BLOCK: u64 = 64 << 10;
    let end = offset + length;
    let mut at = offset;
    while at < end {
        let n = (end - at).min(BLOCK - at % BLOCK) as usize;
        buf.resize(n, 0);
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            buf[..n].fill(0);
            file.write_all_at(&buf[..n], at)?;
        }
        at += n as u64;
    }
    Ok(())
}

/// The NBD error for a failed file operation: out of space (including
/// quota and file size limits) is `ENOSPC`, everything else `EIO`.
fn io_errno(e: &io::Error) -> u32 {
    const ENOSPC: i32 = 28;
    const EFBIG: i32 = 27;
    const EDQUOT: i32 = 122;
    match e.raw_os_error() {
        Some(ENOSPC | EFBIG | EDQUOT) => errno::ENOSPC,
        _ => errno::EIO,
    }
}

/// A background server [`spawn_background_server_with`] started.
#[derive(Debug, Clone)]
pub struct BackgroundServer {
    /// The loopback port it listens on (0 for one that connected over
    /// vsock).
    pub port: u16,
    pub pid: u32,
    /// Where its output goes.
    pub log: PathBuf,
}

/// Starts `ferrite nbd-serve FILE --once --listen 127.0.0.1:0` in the
/// background with this very `ferrite` binary, and returns its port once
/// it listens. See [`spawn_background_server_with`].
pub fn spawn_background_server(file: &Path, read_only: bool, export: &str) -> Result<u16> {
    Ok(spawn_background_server_with(&ferrite_exe()?, file, read_only, export, None)?.port)
}

/// Starts `ferrite nbd-serve FILE --once --vsock` in the background (in a
/// Ferrite dom0) with a fresh random attach token, which it returns once
/// the server has connected to the hypervisor and sent its hello; the
/// hypervisor holds the connection until a create names the token.
pub fn spawn_background_vsock_server(file: &Path, read_only: bool, export: &str) -> Result<[u8; ferrite_nbd::ATTACH_TOKEN_BYTES]> {
    let random = crate::xl::target::random_bytes()?;
    let mut token = [0u8; ferrite_nbd::ATTACH_TOKEN_BYTES];
    token.copy_from_slice(&random[..ferrite_nbd::ATTACH_TOKEN_BYTES]);
    spawn_background_server_with(&ferrite_exe()?, file, read_only, export, Some(&token))?;
    Ok(token)
}

/// The `ferrite` binary to run for a background server.
fn ferrite_exe() -> Result<PathBuf> {
    // FERRITE_EXE: the `ferrite` binary to run, for callers that are not
    // it (the QEMU tests drive `xl` in-process).
    match std::env::var_os("FERRITE_EXE") {
        Some(p) => Ok(std::path::PathBuf::from(p)),
        None => std::env::current_exe().context("cannot find the ferrite binary to start nbd-serve"),
    }
}

/// Starts `EXE nbd-serve FILE --once --listen 127.0.0.1:0 --export EXPORT
/// [--read-only]` detached: in its own process group (a Ctrl-C in the
/// terminal does not reach it), stdin closed, stdout and stderr appended to
/// `<cache>/nbd-serve/<file name>.log` (`$FERRITE_CACHE`, else
/// `~/.cache/ferrite`; the system temporary folder if neither is set).
/// Waits up to 10 s for it to print its port. It exits by itself when its
/// client disconnects. With `vsock_token`, it runs `--vsock` instead of
/// listening, the token in its environment, and is waited for until it
/// has connected.
pub fn spawn_background_server_with(
    exe: &Path,
    file: &Path,
    read_only: bool,
    export: &str,
    vsock_token: Option<&[u8; ferrite_nbd::ATTACH_TOKEN_BYTES]>,
) -> Result<BackgroundServer> {
    use std::os::unix::process::CommandExt;
    let file = std::fs::canonicalize(file).with_context(|| format!("cannot find the disk image {}", file.display()))?;
    let dir = crate::guest_images::cache_root().unwrap_or_else(|_| std::env::temp_dir()).join("nbd-serve");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let stem = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    let log = dir.join(format!("{stem}.log"));
    let mut log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let start = log_file.seek(SeekFrom::End(0))?;
    let mut cmd = Process::new(exe);
    cmd.arg("nbd-serve").arg(&file).args(["--once", "--export", export]);
    match vsock_token {
        Some(token) => {
            cmd.arg("--vsock").env(TOKEN_ENV, token_hex(token));
        }
        None => {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
    }
    if read_only {
        cmd.arg("--read-only");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {} nbd-serve", exe.display()))?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = read_from(&log, start).unwrap_or_default();
        if vsock_token.is_some() && ready_over_vsock(&text) {
            return Ok(BackgroundServer { port: 0, pid, log });
        }
        if let Some(port) = ready_port(&text) {
            // Not waited for: it outlives this process (init reaps it).
            return Ok(BackgroundServer { port, pid, log });
        }
        if let Some(status) = child.try_wait()? {
            bail!("nbd-serve for {} exited ({status}) before serving:\n{}", file.display(), text.trim_end());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("nbd-serve for {} did not start serving within 10 s (log: {})", file.display(), log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_from(path: &Path, offset: u64) -> io::Result<String> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    Ok(s)
}

/// Whether `nbd-serve --vsock` has said it connected.
fn ready_over_vsock(text: &str) -> bool {
    let Some(end) = text.rfind('\n') else { return false };
    text[..end].lines().any(|l| l.starts_with(READY_PREFIX) && l.contains(" over vsock "))
}

/// The port in the line `nbd-serve` prints once listening.
fn ready_port(text: &str) -> Option<u16> {
    // Whole lines only: a line still being written could hold half a port.
    let complete = &text[..text.rfind('\n')? + 1];
    let line = complete.lines().find(|l| l.starts_with(READY_PREFIX))?;
    let (_, addr) = line.rsplit_once(" on ")?;
    addr.trim().parse::<SocketAddr>().ok().map(|a| a.port())
}

/// A blocking NBD client over std's TCP with `ferrite-nbd`'s handshake and
/// headers: what the tests (and a quick check of a server) use. Requests
/// may be pipelined: [`Client::send`] several, then [`Client::reply`] each.
pub struct Client {
    stream: TcpStream,
    reader: BufReader<io::Chain<io::Cursor<Vec<u8>>, TcpStream>>,
    export: Export,
}

impl Client {
    /// Connects and negotiates `export_name`.
    pub fn connect(addr: SocketAddr, export_name: &str) -> Result<Client> {
        let stream = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
        Client::over(stream, export_name)
    }

    /// Negotiates `export_name` on a connection already made (the server
    /// speaks first).
    pub fn over(mut stream: TcpStream, export_name: &str) -> Result<Client> {
        stream.set_nodelay(true).ok();
        let mut handshake = ferrite_nbd::ClientHandshake::new(export_name);
        let mut received = Vec::new();
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        while !handshake.is_done() {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(handshake.closed().into());
            }
            received.extend_from_slice(&chunk[..n]);
            let fed = handshake.feed(&received);
            handshake.poll_output(&mut out);
            stream.write_all(&out)?;
            out.clear();
            received.drain(..fed?);
        }
        let export = handshake.export().context("no export after the handshake")?;
        let reader = BufReader::new(io::Cursor::new(received).chain(stream.try_clone()?));
        Ok(Client { stream, reader, export })
    }

    pub fn export(&self) -> Export {
        self.export
    }

    /// Sends one request (with `data` for a write).
    pub fn send(&mut self, cookie: u64, cmd: Command, flags: u16, offset: u64, length: u32, data: &[u8]) -> Result<()> {
        let mut message = ferrite_nbd::encode_request(cookie, cmd, flags, offset, length).to_vec();
        message.extend_from_slice(data);
        self.stream.write_all(&message)?;
        Ok(())
    }

    /// Reads one simple reply; `read_len` bytes of data follow a
    /// successful one (the length of the READ it answers, else 0).
    pub fn reply(&mut self, read_len: u32) -> Result<(ferrite_nbd::SimpleReply, Vec<u8>)> {
        let mut header = [0u8; ferrite_nbd::REPLY_HEADER_BYTES];
        self.reader.read_exact(&mut header).context("reading a reply")?;
        let reply = ferrite_nbd::decode_simple_reply(&header)?.context("short reply")?;
        let mut data = Vec::new();
        if reply.error == 0 && read_len > 0 {
            data.resize(read_len as usize, 0);
            self.reader.read_exact(&mut data).context("reading a reply's data")?;
        }
        Ok((reply, data))
    }

    /// One request and its reply: the error value and a read's data.
    pub fn call(&mut self, cmd: Command, flags: u16, offset: u64, length: u32, data: &[u8]) -> Result<(u32, Vec<u8>)> {
        self.send(0x5eed, cmd, flags, offset, length, data)?;
        let read_len = if cmd == Command::Read { length } else { 0 };
        let (reply, data) = self.reply(read_len)?;
        if reply.cookie != 0x5eed {
            bail!("reply for cookie {:#x}, expected 0x5eed", reply.cookie);
        }
        Ok((reply.error, data))
    }

    /// `NBD_CMD_DISC`, then closes.
    pub fn disconnect(mut self) -> Result<()> {
        self.send(0, Command::Disc, 0, 0, 0, &[])?;
        self.stream.shutdown(std::net::Shutdown::Write).ok();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
