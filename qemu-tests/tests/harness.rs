//! Tests of the harness itself, independent of the hypervisor: a tiny
//! hand-assembled multiboot1 kernel (a.out kludge, 32-bit flat code) prints a
//! line on COM1 and then reports success, reports failure, triple-faults or
//! hangs. This checks console capture, waiting, exit-status decoding,
//! timeouts and kill-on-drop in a couple of seconds each.

use ferrite_qemu_tests::ferrite_tools::qemu::RunOutcome;
use ferrite_qemu_tests::{base_qemu, test_dir, Vm, WaitError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Copy)]
enum Ending {
    /// `out 0xf4, eax` with this value.
    DebugExit(u32),
    /// Load an empty IDT and `int3`: #GP → #DF → triple fault.
    TripleFault,
    /// `hlt` forever.
    Hang,
}

const LOAD: u32 = 0x0010_0000;

/// Which boot protocol's header the tiny kernel carries.
#[derive(Clone, Copy)]
enum Header {
    /// Multiboot1 with the a.out kludge (32 bytes).
    Multiboot1,
    /// Multiboot2 with address and entry tags (64 bytes).
    Multiboot2,
}

/// An image loaded at 1 MiB: header, code, then the message and a zeroed
/// IDT descriptor.
fn tiny_kernel(message: &str, ending: Ending) -> Vec<u8> {
    tiny_kernel_with(Header::Multiboot1, message, ending)
}

fn tiny_kernel_with(header: Header, message: &str, ending: Ending) -> Vec<u8> {
    let mut img = Vec::new();
    let mut put = |w: u32| img.extend_from_slice(&w.to_le_bytes());
    match header {
        Header::Multiboot1 => {
            let magic: u32 = 0x1BAD_B002;
            let flags: u32 = 1 << 16; // the address fields are valid
            for w in [magic, flags, 0u32.wrapping_sub(magic).wrapping_sub(flags), LOAD, LOAD, 0, 0, LOAD + 32] {
                put(w);
            }
        }
        Header::Multiboot2 => {
            let (magic, len) = (0xE852_50D6u32, 64u32);
            for w in [magic, 0, len, 0u32.wrapping_sub(magic).wrapping_sub(len)] {
                put(w);
            }
            // Address tag (type 2): load the whole file at 1 MiB.
            for w in [2, 24, LOAD, LOAD, 0, 0] {
                put(w);
            }
            // Entry tag (type 3), padded to 8 bytes; then the end tag.
            for w in [3, 12, LOAD + len, 0, 0, 8] {
                put(w);
            }
        }
    }
    let entry = LOAD + img.len() as u32;
    let mut code: Vec<u8> = Vec::new();
    // mov esi, msg (patched below)
    code.push(0xBE);
    let msg_fixup = code.len();
    code.extend_from_slice(&[0; 4]);
    // mov dx, 0x3f8 ; l: lodsb ; test al, al ; jz +3 ; out dx, al ; jmp l
    code.extend_from_slice(&[0x66, 0xBA, 0xF8, 0x03, 0xAC, 0x84, 0xC0, 0x74, 0x03, 0xEE, 0xEB, 0xF8]);
    let mut idt_fixup = None;
    match ending {
        Ending::DebugExit(v) => {
            // mov dx, 0xf4 ; mov eax, v ; out dx, eax
            code.extend_from_slice(&[0x66, 0xBA, 0xF4, 0x00, 0xB8]);
            code.extend_from_slice(&v.to_le_bytes());
            code.push(0xEF);
        }
        Ending::TripleFault => {
            // lidt [idtr] ; int3
            code.extend_from_slice(&[0x0F, 0x01, 0x1D]);
            idt_fixup = Some(code.len());
            code.extend_from_slice(&[0; 4]);
            code.push(0xCC);
        }
        Ending::Hang => {}
    }
    // cli ; h: hlt ; jmp h
    code.extend_from_slice(&[0xFA, 0xF4, 0xEB, 0xFD]);
    let msg_addr = entry + code.len() as u32;
    code[msg_fixup..msg_fixup + 4].copy_from_slice(&msg_addr.to_le_bytes());
    code.extend_from_slice(message.as_bytes());
    code.push(0);
    if let Some(at) = idt_fixup {
        let idtr = entry + code.len() as u32;
        code[at..at + 4].copy_from_slice(&idtr.to_le_bytes());
        code.extend_from_slice(&[0; 6]);
    }
    img.extend_from_slice(&code);
    img
}

fn write_kernel(dir: &Path, ending: Ending) -> PathBuf {
    let path = dir.join("tiny-kernel");
    std::fs::write(&path, tiny_kernel("hello from tiny\nsecond line\n", ending)).expect("write tiny kernel");
    path
}

fn tiny_vm(name: &str, ending: Ending, limit: Duration) -> Vm {
    let dir = test_dir(name);
    let k = write_kernel(&dir, ending);
    Vm::start_with_timeout(name, &dir, base_qemu().kernel(k).append("ignored=1"), limit)
}

#[test]
fn harness_reads_console_and_success_status() {
    let mut vm = tiny_vm("harness_success", Ending::DebugExit(0), Duration::from_secs(60));
    let lines = vm.expect_lines(&["^hello from tiny$", "second"]);
    assert_eq!(lines, ["hello from tiny", "second line"]);
    vm.expect_success();
    assert_eq!(vm.wait_exit(), RunOutcome::Success);
}

#[test]
fn harness_decodes_failure_status() {
    let mut vm = tiny_vm("harness_failure", Ending::DebugExit(1), Duration::from_secs(60));
    assert_eq!(vm.wait_exit(), RunOutcome::Failure);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vm.expect_success()));
    let msg = r.expect_err("expect_success must fail on status 3");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("Ferrite reported failure"), "{msg}");
    assert!(msg.contains("-device isa-debug-exit,iobase=0xf4,iosize=0x04"), "{msg}");
    assert!(msg.contains("  | hello from tiny"), "{msg}");
}

#[test]
fn harness_reports_triple_fault_as_reset() {
    let mut vm = tiny_vm("harness_triple_fault", Ending::TripleFault, Duration::from_secs(60));
    assert_eq!(vm.wait_exit(), RunOutcome::Reset);
    // A line that never comes: the wait ends at once because QEMU exited.
    match vm.try_wait_for("never printed", Duration::from_secs(30)) {
        Err(WaitError::Exited(RunOutcome::Reset)) => {}
        other => panic!("expected Exited(Reset), got {other:?}"),
    }
}

#[test]
fn harness_times_out_and_kills_at_deadline_and_on_drop() {
    let mut vm = tiny_vm("harness_timeout", Ending::Hang, Duration::from_secs(8));
    vm.expect_lines(&["second line"]);
    // A wait's own timeout leaves QEMU running.
    let t0 = Instant::now();
    assert_eq!(
        vm.try_wait_for("never printed", Duration::from_secs(1)),
        Err(WaitError::Timeout(Duration::from_secs(1)))
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(vm.poll_exit().is_none(), "QEMU should still be running");
    // The VM deadline kills it.
    let outcome = vm.wait_exit();
    assert_eq!(outcome, RunOutcome::Signaled);
    assert!(vm.hit_deadline());

    // Drop kills a running QEMU: its pid disappears.
    let vm2 = tiny_vm("harness_drop", Ending::Hang, Duration::from_secs(60));
    let pid = qemu_pid_of(&vm2);
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(vm2);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "QEMU {pid} survived the Vm's drop");
}

/// Finds the QEMU whose command line names this VM's directory.
fn qemu_pid_of(vm: &Vm) -> u32 {
    let needle = vm.dir().to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.starts_with("qemu-system-x86_64") && cmdline.contains(&needle) {
                return pid;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no QEMU process found for {needle}");
}

/// `ferrite_tools::iso` end to end: a GRUB ISO with two modules boots a tiny
/// multiboot2 kernel from `-cdrom`, with GRUB itself on the serial console.
#[test]
fn harness_grub_iso_boots_multiboot2() {
    use ferrite_qemu_tests::ferrite_tools::iso::{build_iso, IsoSpec};
    use ferrite_qemu_tests::write_module;
    let name = "harness_grub_iso";
    let dir = test_dir(name);
    let kernel = dir.join("tiny-mb2");
    std::fs::write(&kernel, tiny_kernel_with(Header::Multiboot2, "hello via grub\n", Ending::DebugExit(0))).unwrap();
    let mods = [write_module(&dir, "m1", 1, 5000, "arg1=one"), write_module(&dir, "m2", 2, 70000, "")];
    let iso = dir.join("tiny.iso");
    let spec = IsoSpec {
        hypervisor: kernel,
        cmdline: "console=com1".into(),
        modules: mods.iter().map(|m| m.spec.clone()).collect(),
    };
    build_iso(&spec, &iso, &dir.join("iso-root")).unwrap_or_else(|e| panic!("{e:#}"));
    let cfg = std::fs::read_to_string(dir.join("iso-root/boot/grub/grub.cfg")).unwrap();
    assert!(cfg.contains("module2 /boot/m1 arg1=one"), "{cfg}");
    let mut vm = Vm::start_with_timeout(name, &dir, base_qemu().cdrom(&iso), Duration::from_secs(90));
    vm.expect_lines(&["hello via grub"]);
    vm.expect_success();
}
