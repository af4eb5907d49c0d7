//! The attacks, in groups: malformed hypercalls (each must get its error),
//! then tampering with the I/O-request page and the buffered-write ring
//! (the hypervisor must believe none of it, and the guest must still run
//! when it is answered properly), then storms.

use crate::tally::{Tally, Want};
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use ferrite_abi::{
    block, bufio, hypercall as nr, net_piece, BlockRequest, Errno, IoRequest, StubConfig, BLOCK_FLAG_GUEST, BLOCK_FLUSH, BLOCK_MAX_SECTORS,
    BLOCK_MAX_SEGMENTS, BLOCK_READ, BLOCK_WRITE, BUFIO_ENTRIES, BUFIO_RANGES, DEST_GUEST, DEST_STUB, GUEST_WINDOW, IOREQ_GPA,
    IOREQ_SLOTS, KIND_PIO, NET_MAX_PIECES, STATE_DONE, STATE_FREE, STATE_READY, STUB_RAM_BYTES,
};
use ferrite_stubdom::{hypercall, memory};

const INVAL: Want = Want::Err(Errno::Inval);
const FAULT: Want = Want::Err(Errno::Fault);
const NOSYS: Want = Want::Err(Errno::Nosys);
const ROFS: Want = Want::Err(Errno::Rofs);

/// The port the `ioloop` guest writes and reads, one byte at a time.
const IOLOOP_PORT: u64 = 0x4F0;
/// A hypervisor address (its higher half): never the stub's.
const HYPERVISOR_ADDRESS: u64 = 0xFFFF_8000_0000_0000;
/// The guest's BIOS ROM (top of 4 GiB) and the PCI hole: not guest RAM.
const GUEST_ROM: u64 = 0xFFFF_F000;
const PCI_HOLE: u64 = 0xC000_0000;
/// BLOCK_IO flushes in the flush storm.
const FLUSH_STORM: u32 = 2000;
/// NET_SEND broadcasts in the storm.
const NET_STORM: u32 = 20_000;
/// WAIT calls `next_request` makes before giving up.
const WAIT_TRIES: u32 = 100_000;

pub fn run_all(config: &StubConfig) -> Tally {
    let mut t = Tally::default();
    let mut buf = vec![0u8; 64 << 10];
    let b = buf.as_mut_ptr() as u64;
    console(&mut t, b);
    irq_power_and_numbers(&mut t);
    block_io(&mut t, config, b);
    data_read(&mut t, config, &mut buf);
    net_send(&mut t, config, &mut buf);
    request_page(&mut t);
    buffered_ring(&mut t);
    t
}

fn console(t: &mut Tally, b: u64) {
    t.call("console-write-longer-than-4k", nr::CONSOLE_WRITE, [b, 4097, 0, 0, 0], INVAL);
    t.call("console-write-length-max", nr::CONSOLE_WRITE, [b, u64::MAX, 0, 0, 0], INVAL);
    t.call("console-write-past-stub-ram", nr::CONSOLE_WRITE, [STUB_RAM_BYTES - 8, 16, 0, 0, 0], FAULT);
    t.call("console-write-address-wraps", nr::CONSOLE_WRITE, [u64::MAX - 7, 16, 0, 0, 0], FAULT);
    t.call("console-write-ioreq-page", nr::CONSOLE_WRITE, [IOREQ_GPA, 16, 0, 0, 0], FAULT);
    t.call("console-write-guest-window", nr::CONSOLE_WRITE, [GUEST_WINDOW, 16, 0, 0, 0], FAULT);
    t.call("console-write-hypervisor-address", nr::CONSOLE_WRITE, [HYPERVISOR_ADDRESS, 16, 0, 0, 0], FAULT);
    t.call("guest-console-write-longer-than-4k", nr::GUEST_CONSOLE_WRITE, [b, 4097, 0, 0, 0], INVAL);
    t.call("guest-console-write-address-wraps", nr::GUEST_CONSOLE_WRITE, [u64::MAX - 7, 16, 0, 0, 0], FAULT);
    t.call("guest-console-write-hypervisor-address", nr::GUEST_CONSOLE_WRITE, [HYPERVISOR_ADDRESS, 16, 0, 0, 0], FAULT);
    t.call("console-input-past-stub-ram", nr::CONSOLE_INPUT, [STUB_RAM_BYTES - 8, 4096, 0, 0, 0], FAULT);
    t.call("console-input-address-wraps", nr::CONSOLE_INPUT, [u64::MAX - 100, u64::MAX, 0, 0, 0], FAULT);
    t.call("console-input-guest-window", nr::CONSOLE_INPUT, [GUEST_WINDOW, 16, 0, 0, 0], FAULT);
}

fn irq_power_and_numbers(t: &mut Tally) {
    for (case, line, level) in [
        ("set-irq-line-24", 24, 1),
        ("set-irq-line-256", 256, 1),
        ("set-irq-line-2^32+1", (1 << 32) | 1, 1),
        ("set-irq-line-max", u64::MAX, 0),
        ("set-irq-level-2", 1, 2),
        ("set-irq-level-max", 1, u64::MAX),
    ] {
        t.call(case, nr::SET_IRQ, [line, level, 0, 0, 0], INVAL);
    }
    // Legal: every line up and down, 10000 times over (its own guest's
    // interrupt controllers take it; the `ioloop` guest never takes one).
    let mut bad = 0u32;
    for round in 0..10_000u64 {
        for line in [round % 24, (round + 12) % 24] {
            bad += u32::from(hypercall::raw(nr::SET_IRQ, [line, 1, 0, 0, 0]) != 0);
            bad += u32::from(hypercall::raw(nr::SET_IRQ, [line, 0, 0, 0, 0]) != 0);
        }
    }
    t.verdict("set-irq-storm", bad == 0, format_args!("40000 calls on lines 0-23, {} not ok", bad));
    for (case, code) in [("guest-power-code-2", 2), ("guest-power-code-2^32+1", (1 << 32) | 1), ("guest-power-code-max", u64::MAX)] {
        t.call(case, nr::GUEST_POWER, [code, 0, 0, 0, 0], INVAL);
    }
    for (case, number) in [
        ("hypercall-0", 0),
        ("hypercall-0xff", 0xFF),
        ("hypercall-0x10a", 0x10A),
        ("hypercall-2^32+console-write", (1 << 32) | nr::CONSOLE_WRITE),
        ("hypercall-2^63+wait", (1 << 63) | nr::WAIT),
        ("hypercall-max", u64::MAX),
    ] {
        t.call(case, number, [0; 5], NOSYS);
    }
}

/// BLOCK_IO with `req` encoded in stub memory.
fn block_call(t: &mut Tally, case: &str, req: &BlockRequest, want: Want) {
    let mut bytes = Vec::new();
    req.encode(&mut bytes);
    t.call(case, nr::BLOCK_IO, [bytes.as_ptr() as u64, bytes.len() as u64, 0, 0, 0], want);
}

fn block_io(t: &mut Tally, config: &StubConfig, b: u64) {
    let Some(disk) = config.disks.iter().find(|d| d.read_only) else {
        t.verdict("block-io", false, format_args!("the guest has no read-only disk to attack through"));
        return;
    };
    let (h, sectors) = (disk.handle, disk.sectors);
    let guest_top = config.ram_below_4g;
    let read = |lba: u64, count: u32, segments: Vec<(u64, u32)>| BlockRequest { disk: h, op: BLOCK_READ, lba, count, flags: 0, segments };
    let guest_read = |gpa: u64| BlockRequest { flags: BLOCK_FLAG_GUEST, ..read(0, 1, vec![(gpa, 512)]) };
    let max_len = (block::HEADER + BLOCK_MAX_SEGMENTS * block::SEGMENT) as u64;

    // The request itself.
    t.call("block-request-longer-than-max", nr::BLOCK_IO, [b, max_len + 1, 0, 0, 0], INVAL);
    t.call("block-request-truncated-header", nr::BLOCK_IO, [b, 10, 0, 0, 0], INVAL);
    t.call("block-request-past-stub-ram", nr::BLOCK_IO, [STUB_RAM_BYTES - 8, 24, 0, 0, 0], FAULT);
    t.call("block-request-address-wraps", nr::BLOCK_IO, [u64::MAX - 7, 24, 0, 0, 0], FAULT);
    let mut bytes = Vec::new();
    read(0, 2, vec![(b, 512), (b, 512)]).encode(&mut bytes);
    t.call("block-request-truncated-segments", nr::BLOCK_IO, [bytes.as_ptr() as u64, (block::HEADER + block::SEGMENT) as u64, 0, 0, 0], INVAL);
    bytes.resize(max_len as usize, 0);
    bytes[20..22].copy_from_slice(&0xFFFFu16.to_le_bytes());
    t.call("block-request-65535-segments", nr::BLOCK_IO, [bytes.as_ptr() as u64, max_len, 0, 0, 0], INVAL);

    // Handles and operations.
    for (case, disk) in [("block-bad-disk-handle", config.disks.len() as u32), ("block-disk-handle-max", u32::MAX)] {
        block_call(t, case, &BlockRequest { disk, ..read(0, 1, vec![(b, 512)]) }, INVAL);
        let flush = BlockRequest { disk, op: BLOCK_FLUSH, ..read(0, 0, vec![]) };
        block_call(t, &alloc::format!("{case}-flush"), &flush, INVAL);
    }
    block_call(t, "block-unknown-op", &BlockRequest { op: 3, ..read(0, 1, vec![(b, 512)]) }, INVAL);
    block_call(t, "block-op-max", &BlockRequest { op: u32::MAX, ..read(0, 1, vec![(b, 512)]) }, INVAL);
    block_call(t, "block-write-to-read-only-disk", &BlockRequest { op: BLOCK_WRITE, ..read(0, 1, vec![(b, 512)]) }, ROFS);

    // Sectors.
    block_call(t, "block-lba-wraps", &read(u64::MAX, 1, vec![(b, 512)]), INVAL);
    block_call(t, "block-lba-plus-count-wraps", &read(u64::MAX - 1, 4, vec![(b, 2048)]), INVAL);
    block_call(t, "block-past-end-of-disk", &read(sectors, 1, vec![(b, 512)]), INVAL);
    block_call(t, "block-straddles-end-of-disk", &read(sectors - 1, 2, vec![(b, 1024)]), INVAL);
    let huge = vec![(b, 16 << 20), (b, (16 << 20) + 512)];
    block_call(t, "block-more-sectors-than-one-request", &read(0, BLOCK_MAX_SECTORS + 1, huge), INVAL);
    block_call(t, "block-segments-do-not-add-up", &read(0, 1, vec![(b, 1024)]), INVAL);
    block_call(t, "block-segment-length-max", &read(0, 1, vec![(b, u32::MAX)]), INVAL);

    // Segments outside what the stub may name.
    block_call(t, "block-segment-past-stub-ram", &read(0, 1, vec![(STUB_RAM_BYTES - 256, 512)]), FAULT);
    block_call(t, "block-segment-address-wraps", &read(0, 1, vec![(u64::MAX - 255, 512)]), FAULT);
    block_call(t, "block-segment-in-ioreq-page", &read(0, 1, vec![(IOREQ_GPA, 512)]), FAULT);
    block_call(t, "block-segment-hypervisor-address", &read(0, 1, vec![(HYPERVISOR_ADDRESS, 512)]), FAULT);
    block_call(t, "block-guest-segment-past-guest-ram", &guest_read(guest_top - 256), FAULT);
    block_call(t, "block-guest-segment-in-bios-rom", &guest_read(GUEST_ROM), FAULT);
    block_call(t, "block-guest-segment-in-pci-hole", &guest_read(PCI_HOLE), FAULT);
    block_call(t, "block-guest-segment-address-wraps", &guest_read(u64::MAX - 255), FAULT);

    // Legal if odd: each stays inside the stub's own memory.
    block_call(t, "block-128-overlapping-segments", &read(0, 128, vec![(b, 512); 128]), Want::Ok);
    block_call(t, "block-zero-sectors", &read(0, 0, vec![]), Want::Ok);
    let mut empty_then_one = vec![(b, 0); 127];
    empty_then_one.push((b, 512));
    block_call(t, "block-empty-segments", &read(0, 1, empty_then_one), Want::Ok);
    block_call(t, "block-odd-sized-segments", &read(0, 1, vec![(b, 100), (b + 1000, 412)]), Want::Ok);

    // The largest request there is, four times: 32 MiB each, 128 segments
    // of 256 KiB over one buffer. Legal; the cap bounds how long each call
    // holds a host CPU (the test watches the ticker meanwhile).
    if sectors >= u64::from(BLOCK_MAX_SECTORS) {
        let big = vec![0u8; 256 << 10];
        let segment = (big.as_ptr() as u64, 256 << 10);
        for _ in 0..4 {
            block_call(t, "block-largest-request", &read(0, BLOCK_MAX_SECTORS, vec![segment; BLOCK_MAX_SEGMENTS]), Want::Ok);
        }
    } else {
        t.verdict("block-largest-request", false, format_args!("the disk has {} sectors, fewer than one request may move", sectors));
    }

    // A storm of flushes, each waiting for the host disk's own flush (the
    // disk is read-only to the guest, not to QEMU, so the flush reaches
    // the image file). Legal; every one must answer 0 or EIO, and the
    // ticker must keep its pace meanwhile.
    let mut flush = Vec::new();
    BlockRequest { op: BLOCK_FLUSH, ..read(0, 0, vec![]) }.encode(&mut flush);
    let (mut ok, mut io, mut other) = (0u32, 0u32, 0u32);
    for _ in 0..FLUSH_STORM {
        match hypercall::raw(nr::BLOCK_IO, [flush.as_ptr() as u64, flush.len() as u64, 0, 0, 0]) {
            0 => ok += 1,
            r if r == Errno::Io.as_result() => io += 1,
            _ => other += 1,
        }
    }
    t.verdict(
        "block-flush-storm",
        other == 0,
        format_args!("{} flushes: {} ok, {} EIO, {} other", FLUSH_STORM, ok, io, other),
    );
}

fn data_read(t: &mut Tally, config: &StubConfig, buf: &mut [u8]) {
    let Some(kernel) = config.linux.as_ref().map(|l| l.kernel) else {
        t.verdict("data-read", false, format_args!("the guest has no boot file to read"));
        return;
    };
    let (h, len) = (u64::from(kernel.handle), kernel.len);
    let b = buf.as_mut_ptr() as u64;
    let guest_top = config.ram_below_4g;
    let call = |t: &mut Tally, case: &str, args: [u64; 5], want: Want| {
        t.call(case, nr::DATA_READ, args, want);
    };
    call(t, "data-bad-handle", [99, 0, b, 16, DEST_STUB], INVAL);
    call(t, "data-handle-2^32", [(1 << 32) | h, 0, b, 16, DEST_STUB], INVAL);
    call(t, "data-handle-max", [u64::MAX, 0, b, 16, DEST_STUB], INVAL);
    call(t, "data-offset-wraps", [h, u64::MAX, b, 2, DEST_STUB], INVAL);
    call(t, "data-length-wraps", [h, 16, b, u64::MAX - 8, DEST_STUB], INVAL);
    call(t, "data-past-end", [h, len - 1, b, 2, DEST_STUB], INVAL);
    call(t, "data-offset-past-end", [h, len + 1, b, 0, DEST_STUB], INVAL);
    call(t, "data-longer-than-64m", [h, 0, b, (64 << 20) + 1, DEST_STUB], INVAL);
    call(t, "data-dest-past-stub-ram", [h, 0, STUB_RAM_BYTES - 4, 16, DEST_STUB], FAULT);
    call(t, "data-dest-address-wraps", [h, 0, u64::MAX - 3, 16, DEST_STUB], FAULT);
    call(t, "data-dest-ioreq-page", [h, 0, IOREQ_GPA, 16, DEST_STUB], FAULT);
    call(t, "data-dest-hypervisor-address", [h, 0, HYPERVISOR_ADDRESS, 16, DEST_STUB], FAULT);
    call(t, "data-dest-past-guest-ram", [h, 0, guest_top - 4, 16, DEST_GUEST], FAULT);
    call(t, "data-dest-guest-bios-rom", [h, 0, GUEST_ROM, 16, DEST_GUEST], FAULT);
    call(t, "data-dest-guest-address-wraps", [h, 0, u64::MAX - 3, 16, DEST_GUEST], FAULT);
    call(t, "data-dest-kind-2", [h, 0, b, 16, 2], INVAL);
    call(t, "data-dest-kind-max", [h, 0, b, 16, u64::MAX], INVAL);
    // The control: a good read works and brings the file's first bytes.
    buf[..4].fill(0);
    let r = hypercall::raw(nr::DATA_READ, [h, 0, b, 16, DEST_STUB]);
    t.verdict("data-read-control", r == 16 && buf[..4] == b"\x7fELF"[..], format_args!("ok {:#x}, first bytes {:02x?}", r, &buf[..4]));
}

/// `count` NET_SEND pieces, each (address, length), written at the start
/// of `buf`; returns the list's address.
fn pieces(buf: &mut [u8], list: &[(u64, u32)]) -> u64 {
    for (i, &(a, l)) in list.iter().enumerate() {
        let at = i * net_piece::SIZE;
        buf[at..at + 8].copy_from_slice(&a.to_le_bytes());
        buf[at + 8..at + 12].copy_from_slice(&l.to_le_bytes());
        buf[at + 12..at + 16].fill(0);
    }
    buf.as_ptr() as u64
}

fn net_send(t: &mut Tally, config: &StubConfig, buf: &mut [u8]) {
    if config.nics.is_empty() {
        t.verdict("net-send", false, format_args!("the guest has no NIC to attack through"));
        return;
    }
    // A broadcast frame in the stub's memory, after the piece lists.
    let frame_at = buf.as_ptr() as u64 + 0x8000;
    buf[0x8000..0x8006].fill(0xFF);
    buf[0x8006..0x800C].copy_from_slice(&config.nics[0].mac);
    buf[0x800C..0x800E].copy_from_slice(&[0x08, 0x06]);
    let guest_top = config.ram_below_4g;
    let ok = pieces(buf, &[(frame_at, 60)]);
    t.call("net-send-bad-handle", nr::NET_SEND, [1, ok, 1, DEST_STUB, 0], INVAL);
    t.call("net-send-handle-2^32", nr::NET_SEND, [1 << 32, ok, 1, DEST_STUB, 0], INVAL);
    t.call("net-send-no-pieces", nr::NET_SEND, [0, ok, 0, DEST_STUB, 0], INVAL);
    t.call("net-send-65-pieces", nr::NET_SEND, [0, ok, NET_MAX_PIECES as u64 + 1, DEST_STUB, 0], INVAL);
    t.call("net-send-pieces-max", nr::NET_SEND, [0, ok, u64::MAX, DEST_STUB, 0], INVAL);
    t.call("net-send-dest-kind-2", nr::NET_SEND, [0, ok, 1, 2, 0], INVAL);
    t.call("net-send-list-past-stub-ram", nr::NET_SEND, [0, STUB_RAM_BYTES - 8, 1, DEST_STUB, 0], FAULT);
    t.call("net-send-list-hypervisor-address", nr::NET_SEND, [0, HYPERVISOR_ADDRESS, 1, DEST_STUB, 0], FAULT);
    t.call("net-send-list-guest-window", nr::NET_SEND, [0, GUEST_WINDOW, 1, DEST_STUB, 0], FAULT);
    let runt = pieces(buf, &[(frame_at, 13)]);
    t.call("net-send-runt", nr::NET_SEND, [0, runt, 1, DEST_STUB, 0], INVAL);
    let oversize = pieces(buf, &[(frame_at, 1519)]);
    t.call("net-send-oversize", nr::NET_SEND, [0, oversize, 1, DEST_STUB, 0], INVAL);
    let huge: Vec<(u64, u32)> = (0..NET_MAX_PIECES).map(|_| (frame_at, u32::MAX)).collect();
    let huge = pieces(buf, &huge);
    t.call("net-send-lengths-sum-huge", nr::NET_SEND, [0, huge, NET_MAX_PIECES as u64, DEST_STUB, 0], INVAL);
    // Well-formed lists whose pieces are not the stub's or the guest's
    // memory: accepted, and the frame goes nowhere (nothing is read).
    for (case, addr, dest) in [
        ("net-send-piece-past-stub-ram", STUB_RAM_BYTES - 8, DEST_STUB),
        ("net-send-piece-ioreq-page", IOREQ_GPA, DEST_STUB),
        ("net-send-piece-hypervisor-address", HYPERVISOR_ADDRESS, DEST_STUB),
        ("net-send-piece-address-wraps", u64::MAX - 3, DEST_STUB),
        ("net-send-piece-past-guest-ram", guest_top - 4, DEST_GUEST),
        ("net-send-piece-guest-bios-rom", GUEST_ROM, DEST_GUEST),
        ("net-send-piece-pci-hole", PCI_HOLE, DEST_GUEST),
    ] {
        let list = pieces(buf, &[(addr, 60)]);
        t.call(case, nr::NET_SEND, [0, list, 1, dest, 0], Want::Ok);
    }
    // A frame in 60 one-byte pieces, then a storm of broadcasts (the
    // bridge's flood budget holds them; the ticker must keep its pace).
    let bytes: Vec<(u64, u32)> = (0..60).map(|i| (frame_at + i, 1)).collect();
    let bytes = pieces(buf, &bytes);
    t.call("net-send-one-byte-pieces", nr::NET_SEND, [0, bytes, 60, DEST_STUB, 0], Want::Ok);
    let ok = pieces(buf, &[(frame_at, 60)]);
    let mut bad = 0u32;
    for _ in 0..NET_STORM {
        bad += u32::from(hypercall::raw(nr::NET_SEND, [0, ok, 1, DEST_STUB, 0]) != 0);
    }
    t.verdict("net-send-broadcast-storm", bad == 0, format_args!("{} broadcasts, {} not ok", NET_STORM, bad));
    // The receive ring's counters are the stub's to lie about: a CONSUMED
    // far ahead of PRODUCED only makes its own ring look full.
    memory::set_net_rx_consumed(0, memory::net_rx_produced(0).wrapping_add(0x8000_0000));
    let r = hypercall::raw(nr::NET_SEND, [0, ok, 1, DEST_STUB, 0]);
    t.verdict("net-rx-consumed-lie", r == 0, format_args!("NET_SEND after the lie: {:#x}", r));
}

// ---------------------------------------------------------------------------
// The I/O-request page. Slot 0 is the guest's (it has one vCPU).

fn slot0_state() -> u32 {
    memory::slot_state(0).load(Ordering::Acquire)
}

/// WAITs until slot 0 holds a request (at most `WAIT_TRIES` calls).
fn next_request() -> Option<IoRequest> {
    for _ in 0..WAIT_TRIES {
        if slot0_state() == STATE_READY {
            return Some(memory::slot_request(0));
        }
        hypercall::wait();
    }
    None
}

/// Answers slot 0 with `data` and resumes the guest.
fn answer(data: u64) {
    memory::slot_set_data(0, data);
    memory::slot_state(0).store(STATE_DONE, Ordering::Release);
    hypercall::ioreq_done();
}

/// Answers the request waiting in slot 0 (made under the rules before a
/// change), so the next one is made under the new ones.
fn answer_pending() {
    if next_request().is_some() {
        answer(0);
    }
}

/// A request as the `ioloop` guest makes it: one byte to or from its port.
fn well_formed(r: &IoRequest) -> bool {
    r.kind == KIND_PIO && r.size == 1 && r.count == 1 && r.vcpu == 0 && r.flags == 0 && r.addr == IOLOOP_PORT
}

/// Answers requests (reads with 0) until a request `stop` accepts is in
/// slot 0, at most `limit` of them. Returns it and how many went before.
fn serve_until(limit: u32, stop: impl Fn(&IoRequest) -> bool) -> Option<(IoRequest, u32)> {
    for served in 0..limit {
        let req = next_request()?;
        if stop(&req) {
            return Some((req, served));
        }
        answer(0);
    }
    None
}

fn request_page(t: &mut Tally) {
    // No buffered ports yet: every access of the guest comes to slot 0.
    memory::set_bufio_ranges(&[]);
    let first = next_request();
    t.verdict("setup-first-request", first.is_some_and(|r| well_formed(&r)), format_args!("{:?}", first));

    // An answer wider than the access: the guest gets its byte only (its
    // next write carries what it read).
    let wide = serve_until(16, |r| r.is_read()).map(|_| {
        answer(0xFFFF_FFFF_FFFF_FF5A);
        next_request()
    });
    let ok = matches!(wide, Some(Some(r)) if !r.is_read() && r.data == 0x5A);
    t.verdict("answer-wider-than-the-access", ok, format_args!("next request {:?}", wide));

    // Slots of vCPUs the guest does not have, DONE or READY: ignored.
    let before = memory::slot_request(0);
    for i in 1..IOREQ_SLOTS {
        memory::slot_set_data(i, 0x1234);
        memory::slot_state(i).store(STATE_DONE, Ordering::Release);
    }
    let r = hypercall::raw(nr::IOREQ_DONE, [0; 5]);
    let others_done = (1..IOREQ_SLOTS).all(|i| memory::slot_state(i).load(Ordering::Acquire) == STATE_DONE);
    let ok = r == 0 && others_done && slot0_state() == STATE_READY && memory::slot_request(0) == before;
    t.verdict("done-without-a-request", ok, format_args!("ok {:#x}; foreign slots left alone: {}; slot 0 {}", r, others_done, slot0_state()));
    for i in 1..IOREQ_SLOTS {
        memory::slot_state(i).store(STATE_READY, Ordering::Release);
    }
    let served = serve_until(64, |_| false);
    let others_ready = (1..IOREQ_SLOTS).all(|i| memory::slot_state(i).load(Ordering::Acquire) == STATE_READY);
    t.verdict("ready-in-slots-of-no-vcpu", served.is_none() && others_ready, format_args!("64 requests served, foreign slots left alone: {}", others_ready));
    for i in 1..IOREQ_SLOTS {
        memory::slot_state(i).store(STATE_FREE, Ordering::Release);
    }

    // The guest's own slot: READY flipped to FREE, then garbage, then
    // answered at last.
    let pending = next_request();
    memory::slot_state(0).store(STATE_FREE, Ordering::Release);
    let r1 = hypercall::raw(nr::IOREQ_DONE, [0; 5]);
    let still_free = slot0_state() == STATE_FREE;
    memory::slot_state(0).store(0xDEAD_BEEF, Ordering::Release);
    let r2 = hypercall::raw(nr::IOREQ_DONE, [0; 5]);
    let still_garbage = slot0_state() == 0xDEAD_BEEF;
    answer(0);
    let resumed = next_request();
    let ok = pending.is_some() && r1 == 0 && r2 == 0 && still_free && still_garbage && resumed.is_some_and(|r| well_formed(&r));
    t.verdict(
        "ready-flipped-to-free-then-garbage",
        ok,
        format_args!("ok {:#x}/{:#x}, states kept: {}/{}; answered, the guest sent {:?}", r1, r2, still_free, still_garbage, resumed),
    );

    // Every field of the pending request overwritten: the hypervisor
    // completes the access it recorded, not what the slot now says.
    let junk = IoRequest { kind: 0xFF, dir: 7, size: 0xFF, flags: 0xFF, count: u32::MAX, vcpu: 4095, addr: u64::MAX, data: u64::MAX };
    memory::slot_write_fields(0, &junk);
    answer(0);
    let next = next_request();
    t.verdict("request-fields-overwritten", next.is_some_and(|r| well_formed(&r)), format_args!("the guest then sent {:?}", next));

    // Storms: DONE and IOREQ_DONE whatever the slot holds, WAIT with every
    // flag while a request is pending.
    for _ in 0..5000 {
        memory::slot_state(0).store(STATE_DONE, Ordering::Release);
        hypercall::ioreq_done();
    }
    let next = next_request();
    t.verdict("done-storm", next.is_some_and(|r| well_formed(&r)), format_args!("5000 DONE + IOREQ_DONE; the guest then sent {:?}", next));
    let mut bad = 0u32;
    for _ in 0..10_000 {
        let r = hypercall::raw(nr::IOREQ_DONE, [u64::MAX; 5]);
        bad += u32::from(r != 0);
    }
    t.verdict("ioreq-done-storm", bad == 0 && slot0_state() == STATE_READY, format_args!("10000 calls, {} not ok", bad));
    let mut bad = 0u32;
    for _ in 0..10_000 {
        let r = hypercall::raw(nr::WAIT, [u64::MAX; 5]);
        bad += u32::from(r & ferrite_abi::WAIT_REQUESTS == 0 || (r as i64) < 0);
    }
    t.verdict("wait-storm", bad == 0, format_args!("10000 WAITs with every flag set, {} without the pending request", bad));
}

// ---------------------------------------------------------------------------
// The buffered-write ring.

fn produced() -> u32 {
    memory::bufio_word(bufio::PRODUCED).load(Ordering::Acquire)
}

fn set_consumed(n: u32) {
    memory::bufio_word(bufio::CONSUMED).store(n, Ordering::Release);
}

fn set_all_ranges(first: u16, last: u16) {
    memory::set_bufio_ranges(&[(first, last); BUFIO_RANGES]);
}

/// With CONSUMED set to `consumed`: `requests` requests later, by how much
/// PRODUCED moved and whether the guest's writes came through slot 0.
fn produced_after(consumed: u32, requests: u32) -> (u32, bool) {
    let p = produced();
    set_consumed(consumed);
    let mut wrote_through_slot = false;
    for _ in 0..requests {
        let Some(r) = next_request() else { break };
        wrote_through_slot |= !r.is_read();
        answer(0);
    }
    (produced().wrapping_sub(p), wrote_through_slot)
}

fn buffered_ring(t: &mut Tally) {
    // A range covering every port, in every entry: the guest's writes
    // fill the ring (never more than it holds), then come through the slot.
    let p0 = produced();
    set_consumed(p0);
    set_all_ranges(0, 0xFFFF);
    answer_pending();
    let through_slot = serve_until(2 * BUFIO_ENTRIES as u32, |r| !r.is_read());
    let filled = produced().wrapping_sub(p0);
    let ok = through_slot.is_some_and(|(r, _)| well_formed(&r)) && filled as usize == BUFIO_ENTRIES;
    t.verdict("range-covering-every-port", ok, format_args!("{} writes buffered, then {:?}", filled, through_slot.map(|(r, _)| r)));
    let entries_ok = (p0..p0.wrapping_add(filled)).all(|n| {
        let w = memory::bufio_entry(n);
        u64::from(w.port) == IOLOOP_PORT && w.size == 1
    });
    t.verdict("ring-entries-are-the-guests-writes", entries_ok, format_args!("{} entries", filled));

    // Lying CONSUMED: ahead of PRODUCED, far behind it, or one short of a
    // full ring. The hypervisor writes at most what the ring has room for.
    let p = produced();
    let (moved, slot) = produced_after(p.wrapping_add(1), 64);
    t.verdict("consumed-ahead-of-produced", moved == 0 && slot, format_args!("PRODUCED moved {}, writes through the slot: {}", moved, slot));
    let (moved, slot) = produced_after(p.wrapping_sub(1000), 64);
    t.verdict("consumed-far-behind", moved == 0 && slot, format_args!("PRODUCED moved {}, writes through the slot: {}", moved, slot));
    let (moved, slot) = produced_after(p.wrapping_sub(BUFIO_ENTRIES as u32 - 1), 64);
    t.verdict("consumed-one-short-of-full", moved == 1 && slot, format_args!("PRODUCED moved {}, writes through the slot: {}", moved, slot));

    // Lying PRODUCED: the hypervisor keeps its own count.
    let p = produced();
    set_consumed(p);
    memory::bufio_word(bufio::PRODUCED).store(p ^ 0xDEAD_0000, Ordering::Release);
    let served = serve_until(64, |_| produced() != p ^ 0xDEAD_0000);
    let now = produced();
    t.verdict("produced-overwritten", now == p.wrapping_add(1), format_args!("PRODUCED {:#x} -> {:#x} after {:?} requests", p, now, served.map(|s| s.1)));

    // Inverted ranges mean none: writes come through the slot again.
    set_all_ranges(0xFFFF, 0);
    set_consumed(produced());
    let p = produced();
    answer_pending();
    let write = serve_until(16, |r| !r.is_read());
    t.verdict("inverted-ranges", write.is_some() && produced() == p, format_args!("PRODUCED moved {}", produced().wrapping_sub(p)));
    memory::set_bufio_ranges(&[]);
}

/// The console through CONSOLE_WRITE and GUEST_CONSOLE_WRITE: 16 calls of
/// 4096 newlines each (65536 lines). The hypervisor must drop most of them
/// (each domain has a budget of console lines); the test counts what
/// reached the serial console.
pub fn console_flood() -> Tally {
    let mut t = Tally::default();
    let newlines = vec![b'\n'; 4096];
    let (p, n) = (newlines.as_ptr() as u64, newlines.len() as u64);
    for (case, number) in [("console-write-flood", nr::CONSOLE_WRITE), ("guest-console-write-flood", nr::GUEST_CONSOLE_WRITE)] {
        let bad = (0..16).filter(|_| hypercall::raw(number, [p, n, 0, 0, 0]) != 0).count();
        t.verdict(case, bad == 0, format_args!("16 calls of 4096 newlines, {} refused", bad));
    }
    t
}
