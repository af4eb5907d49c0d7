//! `spawn_background_server` with the real `ferrite` binary: it starts
//! `ferrite nbd-serve --once` detached, reports its port, serves one
//! client and exits when that client disconnects (how the server `xl
//! create` starts for a `file:` disk ends with its domain).

use ferrite_nbd::Command;
use ferrite_tools::nbd_server::{spawn_background_server_with, Client};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Whether process `pid` has exited (gone, or a zombie waiting for us).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_exit(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if exited(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn background_server_serves_once_and_exits() {
    let dir = std::env::temp_dir().join(format!("ferrite-nbd-bg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Keep the log out of the user's cache.
    std::env::set_var("FERRITE_CACHE", dir.join("cache"));
    let image = dir.join("guest disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_ferrite"));

    let server = spawn_background_server_with(exe, &image, false, "xvda", None).unwrap();
    assert_ne!(server.port, 0);
    assert!(server.log.starts_with(dir.join("cache").join("nbd-serve")), "{}", server.log.display());
    let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
    let mut c = Client::connect(addr, "xvda").unwrap();
    assert_eq!(c.export().size, 1 << 20);
    assert_eq!(c.call(Command::Write, ferrite_nbd::cmd_flags::FUA, 512, 6, b"domU!\n").unwrap().0, 0);
    c.disconnect().unwrap();
    assert!(wait_exit(server.pid), "nbd-serve --once still running after its client left");
    assert_eq!(&std::fs::read(&image).unwrap()[512..518], b"domU!\n");
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(log.contains("as export 'xvda' on 127.0.0.1:"), "{log}");
    assert!(log.contains("disconnected"), "{log}");

    // Read-only, and a client that only connects and leaves.
    let server = spawn_background_server_with(exe, &image, true, "", None).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
    let mut c = Client::connect(addr, "").unwrap();
    assert!(c.export().read_only());
    assert_eq!(c.call(Command::Write, 0, 0, 4, b"nope").unwrap().0, ferrite_nbd::errno::EPERM);
    drop(c);
    assert!(wait_exit(server.pid));

    // A missing image is reported, not hung on.
    let e = spawn_background_server_with(exe, &dir.join("missing.img"), false, "", None).unwrap_err();
    assert!(format!("{e:#}").contains("missing.img"), "{e:#}");
    std::fs::remove_dir_all(&dir).ok();
}
