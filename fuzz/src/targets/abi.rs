//! `stub-config`, `block-request`, `ioreq-slot`: what crosses the
//! hypervisor/stub-domain boundary (`ferrite_abi`).
//!
//! Properties: a decoded `StubConfig` re-encodes to at most the input's
//! length and decodes back to itself; a decoded block request has at most
//! `BLOCK_MAX_SEGMENTS` segments, all present in full in the input,
//! re-encodes to the input (reserved fields zeroed) and back; its transfer
//! check accepts exactly the requests that fit the disk, stay within
//! `BLOCK_MAX_SECTORS` and whose segments add up to its sectors (computed
//! here without overflow); an I/O-request slot and a buffered-write entry
//! re-encode to the bytes they came from (the state word and reserved
//! bytes untouched); hypercall results and power codes decode only to
//! values that encode back.

use super::{le, Target};
use ferrite_abi::{
    block, BlockRequest, BufferedWrite, DataSource, DirectLinuxBoot, Errno, IoRequest, PowerAction, StubConfig, StubDisk,
    BLOCK_MAX_SECTORS, BLOCK_MAX_SEGMENTS, IOREQ_SLOT_SIZE,
};

pub const STUB_CONFIG: Target = Target {
    name: "stub-config",
    about: "StubConfig (postcard): a decoded config re-encodes no longer than its input and round-trips",
    max_len: 1024,
    seeds: || vec![sample_config(false).to_bytes().unwrap(), sample_config(true).to_bytes().unwrap()],
    dictionary: &[b"\x00", b"\x01", b"\x7f", b"\x80\x01", b"\xff\xff\xff\xff\x0f", b"hda", b"disk0"],
    run: run_stub_config,
};

pub const BLOCK_REQUEST: Target = Target {
    name: "block-request",
    about: "BLOCK_IO request: bounded segments present in full, exact re-encoding, transfer check matches an overflow-free restatement",
    max_len: block::HEADER + (BLOCK_MAX_SEGMENTS + 2) * block::SEGMENT,
    seeds: || {
        let seg = |n: u32| vec![(0x1000u64, n * 512), (0x9000, 512)];
        [
            BlockRequest { disk: 0, op: 0, lba: 0, count: 9, flags: 1, segments: seg(8) },
            BlockRequest { disk: 1, op: 1, lba: u64::MAX - 4, count: 2, flags: 0, segments: seg(1) },
            BlockRequest { disk: 0, op: 2, lba: 0, count: 0, flags: 0, segments: vec![] },
        ]
        .iter()
        .map(|r| {
            let mut v = Vec::new();
            r.encode(&mut v);
            v
        })
        .collect()
    },
    dictionary: &[b"\x80\x00", b"\x81\x00", b"\x00\x00\x01\x00", b"\x00\x02\x00\x00"],
    run: run_block_request,
};

pub const IOREQ_SLOT: Target = Target {
    name: "ioreq-slot",
    about: "I/O-request slot, buffered-write entry, hypercall result and power codes: exact re-encoding",
    max_len: IOREQ_SLOT_SIZE + 8 + 16,
    seeds: || {
        let req = IoRequest { kind: 1, dir: 1, size: 4, flags: 1, count: 16, vcpu: 0, addr: 0xfebf_0000, data: 0x7c00 };
        let mut slot = [0u8; IOREQ_SLOT_SIZE];
        req.encode(&mut slot);
        slot[0] = 1;
        let mut v = slot.to_vec();
        v.extend_from_slice(&BufferedWrite { port: 0x3f8, size: 1, value: 0x41 }.encode());
        v.extend_from_slice(&(-22i64 as u64).to_le_bytes());
        v.extend_from_slice(&1u64.to_le_bytes());
        vec![v]
    },
    dictionary: &[b"\x01\x00\x00\x00", b"\x02\x00\x00\x00", b"\xea\xff\xff\xff\xff\xff\xff\xff"],
    run: run_ioreq_slot,
};

fn sample_config(linux: bool) -> StubConfig {
    StubConfig {
        guest_id: 3,
        guest_name: "hvm-guest".into(),
        vcpus: 2,
        ram_below_4g: 512 << 20,
        ram_above_4g: 0,
        disks: vec![StubDisk { handle: 0, name: "disk0".into(), vdev: "hda".into(), sectors: 2048, read_only: false, model: Default::default() }, StubDisk { handle: 1, name: "disk1".into(), vdev: "xvdb".into(), sectors: 4096, read_only: true, model: ferrite_abi::StubDiskModel::VirtioPci }],
        nics: vec![ferrite_abi::StubNic { handle: 0, mac: [0, 0x16, 0x3e, 0, 0, 1], model: Default::default() }],
        linux: linux.then(|| DirectLinuxBoot {
            kernel: DataSource { handle: 0, len: 1 << 20 },
            initrd: Some(DataSource { handle: 1, len: 4096 }),
            cmdline: "console=ttyS0".into(),
            option_rom: DataSource { handle: 2, len: 1536 },
        }),
        boot_order: "/pci@i0cf8/*@1,1/drive@0/disk@0\n".into(),
        pm1a_evt: 0xb000,
        pm1a_cnt: 0xb004,
        pm_tmr: 0xb008,
        pm_tmr_32bit: true,
        sci_irq: 9,
        fault_inject_ata_command: linux.then_some(0xec),
        fault_inject_wild_access: false,
    }
}

fn run_stub_config(input: &[u8]) {
    let Ok(config) = StubConfig::from_bytes(input) else { return };
    let bytes = config.to_bytes().expect("a decoded config encodes");
    assert!(bytes.len() <= input.len(), "re-encoding grew from {} to {} bytes", input.len(), bytes.len());
    assert_eq!(StubConfig::from_bytes(&bytes).expect("the re-encoding decodes"), config);
}

fn run_block_request(input: &[u8]) {
    let disk_sectors = le(input, 0, 8) >> (le(input, 0, 1) & 63);
    let Some(req) = BlockRequest::decode(input) else { return };
    assert!(req.segments.len() <= BLOCK_MAX_SEGMENTS);
    let used = block::HEADER + req.segments.len() * block::SEGMENT;
    assert!(input.len() >= used, "accepted {} segments from {} bytes", req.segments.len(), input.len());
    let mut again = Vec::new();
    req.encode(&mut again);
    let mut expected = input[..used].to_vec();
    for i in 0..req.segments.len() {
        let reserved = block::HEADER + i * block::SEGMENT + 12;
        expected[reserved..reserved + 4].fill(0);
    }
    assert_eq!(again, expected, "re-encoding differs");
    assert_eq!(BlockRequest::decode(&again), Some(req.clone()));

    let total: u128 = req.segments.iter().map(|&(_, l)| u128::from(l)).sum();
    let fits = req.count <= BLOCK_MAX_SECTORS
        && u128::from(req.lba) + u128::from(req.count) <= u128::from(disk_sectors)
        && total == u128::from(req.count) * 512;
    assert_eq!(req.check_transfer(disk_sectors).is_ok(), fits, "check_transfer({disk_sectors}) of {req:?}");
}

fn run_ioreq_slot(input: &[u8]) {
    let mut slot = [0u8; IOREQ_SLOT_SIZE];
    for (i, b) in slot.iter_mut().enumerate() {
        *b = le(input, i, 1) as u8;
    }
    let req = IoRequest::decode(&slot);
    let mut again = slot;
    req.encode(&mut again);
    assert_eq!(again, slot, "an I/O request does not re-encode to its slot");
    assert_eq!(req.is_read(), req.dir == ferrite_abi::DIR_READ);

    let mut entry = [0u8; 8];
    for (i, b) in entry.iter_mut().enumerate() {
        *b = le(input, IOREQ_SLOT_SIZE + i, 1) as u8;
    }
    let w = BufferedWrite::decode(&entry);
    entry[3] = 0; // reserved
    assert_eq!(w.encode(), entry, "a buffered write does not re-encode");

    let result = le(input, IOREQ_SLOT_SIZE + 8, 8);
    if let Some(e) = Errno::from_result(result) {
        assert_eq!(e.as_result(), result, "{e:?}");
    }
    let code = le(input, IOREQ_SLOT_SIZE + 16, 8);
    let _ = PowerAction::from_code(code);
}
