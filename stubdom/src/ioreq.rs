//! The service loop: take READY slots of the I/O-request page, run them
//! against the devices, answer, resume the guest, wait for more.
//!
//! Per slot: the state word is read with Acquire (the hypervisor wrote the
//! fields before storing READY), the fields decoded, the access performed,
//! `data` written for reads, then DONE stored with Release. One IOREQ_DONE
//! per batch resumes the vCPUs; WAIT then blocks until another slot is
//! READY or console input arrives, and says which (it returns at once if
//! there is work, so nothing is missed between the scan and the call). While a device has background work (a long fw_cfg DMA transfer,
//! done in bounded steps), the loop goes round without waiting.

use crate::devices::Devices;
use crate::guest_memory::GuestWindow;
use crate::{hypercall, logger, memory, strio};
use core::sync::atomic::Ordering;
use ferrite_abi::{
    IoRequest, StubConfig, DIR_READ, DIR_WRITE, FLAG_DATA_IS_GPA, FLAG_DOWN, IOREQ_SLOTS, KIND_MMIO, KIND_PIO,
    STATE_DONE, STATE_READY,
};
use ferrite_devmodel::dma::GuestMemoryAccess;

/// Bytes of string I/O moved per chunk.
const CHUNK: usize = 4096;

pub fn serve(config: &StubConfig, devices: &mut Devices) -> ! {
    let slots = (config.vcpus as usize).clamp(1, IOREQ_SLOTS);
    let mut work = hypercall::wait();
    loop {
        if work & ferrite_abi::WAIT_INPUT != 0 {
            devices.input_arrived();
        }
        if work & ferrite_abi::WAIT_NET != 0 {
            devices.net_arrived();
        }
        apply_buffered_writes(devices);
        let mut answered = false;
        for index in 0..slots {
            let state = memory::slot_state(index);
            if state.load(Ordering::Acquire) != STATE_READY {
                continue;
            }
            // The guest queued its earlier writes before publishing this
            // request (so seeing READY means seeing them): apply them first.
            apply_buffered_writes(devices);
            let req = memory::slot_request(index);
            if let Some(data) = handle(devices, &req) {
                memory::slot_set_data(index, data);
            }
            state.store(STATE_DONE, Ordering::Release);
            answered = true;
        }
        let more = devices.end_of_batch();
        // With background work left, resume the answered vCPUs and go on
        // with it; else resume them and wait, in one hypercall.
        work = if more {
            if answered {
                hypercall::ioreq_done();
            }
            ferrite_abi::WAIT_REQUESTS
        } else {
            hypercall::wait_after(answered)
        };
    }
}

/// Applies the buffered writes queued so far, in order.
fn apply_buffered_writes(devices: &mut Devices) {
    let produced = memory::bufio_produced();
    let mut consumed = memory::bufio_consumed();
    if consumed == produced {
        return;
    }
    while consumed != produced {
        let w = memory::bufio_entry(consumed);
        if matches!(w.size, 1 | 2 | 4) {
            devices.pio_write(w.port, w.size, w.value);
        }
        consumed = consumed.wrapping_add(1);
    }
    memory::set_bufio_consumed(consumed);
}

fn size_mask(size: u8) -> u64 {
    match size {
        8 => u64::MAX,
        n => (1u64 << (8 * u32::from(n))) - 1,
    }
}

/// Performs one request; the value for `data` of a (non-string) read.
fn handle(devices: &mut Devices, req: &IoRequest) -> Option<u64> {
    let valid_size = match req.kind {
        KIND_PIO => matches!(req.size, 1 | 2 | 4),
        KIND_MMIO => matches!(req.size, 1 | 2 | 4 | 8),
        _ => false,
    };
    if !valid_size || !matches!(req.dir, DIR_READ | DIR_WRITE) {
        if logger::limited() {
            log::warn!("ignoring malformed I/O request {:?}", req);
        }
        return req.is_read().then_some(u64::MAX);
    }
    if req.flags & FLAG_DATA_IS_GPA != 0 {
        string_io(devices, req);
        return None;
    }
    let mask = size_mask(req.size);
    match (req.kind, req.is_read()) {
        (KIND_PIO, true) => Some(u64::from(devices.pio_read(req.addr as u16, req.size)) & mask),
        (KIND_PIO, false) => {
            devices.pio_write(req.addr as u16, req.size, (req.data & mask) as u32);
            None
        }
        (_, true) => Some(devices.mmio_read(req.addr, req.size) & mask),
        (_, false) => {
            devices.mmio_write(req.addr, req.size, req.data & mask);
            None
        }
    }
}

/// `count` elements between the device and guest memory at `data`.
fn string_io(devices: &mut Devices, req: &IoRequest) {
    let size = usize::from(req.size);
    let down = req.flags & FLAG_DOWN != 0;
    let mut mem = GuestWindow { ram: devices.guest_ram() };
    let per_chunk = (CHUNK / size) as u64;
    let count = u64::from(req.count);
    let mut buf = [0u8; CHUNK];
    let mut first = 0u64;
    while first < count {
        let n = per_chunk.min(count - first);
        let bytes = &mut buf[..n as usize * size];
        let Some(gpa) = strio::chunk_start(req.data, req.size.into(), down, first, n) else {
            string_fault(req, first);
            return;
        };
        if req.is_read() {
            // Device → guest memory (`ins`, or `movs` from MMIO).
            if !device_read(devices, req, first, bytes) {
                string_fault(req, first);
                return;
            }
            if down {
                strio::reverse_elements(bytes, size);
            }
            if mem.write(gpa, bytes).is_err() {
                string_fault(req, first);
                return;
            }
        } else {
            // Guest memory → device (`outs`, or `movs` to MMIO).
            if mem.read(gpa, bytes).is_err() {
                string_fault(req, first);
                return;
            }
            if down {
                strio::reverse_elements(bytes, size);
            }
            if !device_write(devices, req, first, bytes) {
                string_fault(req, first);
                return;
            }
        }
        first += n;
    }
}

/// Reads elements `first..` of a string request from the device into
/// `bytes` (device order). False if an MMIO address wraps.
fn device_read(devices: &mut Devices, req: &IoRequest, first: u64, bytes: &mut [u8]) -> bool {
    let size = usize::from(req.size);
    if req.kind == KIND_PIO {
        devices.pio_read_string(req.addr as u16, req.size, bytes);
        return true;
    }
    for (i, elem) in bytes.chunks_exact_mut(size).enumerate() {
        let down = req.flags & FLAG_DOWN != 0;
        let Some(addr) = strio::element_addr(req.addr, req.size.into(), down, first + i as u64) else {
            return false;
        };
        let v = devices.mmio_read(addr, req.size);
        elem.copy_from_slice(&v.to_le_bytes()[..size]);
    }
    true
}

fn device_write(devices: &mut Devices, req: &IoRequest, first: u64, bytes: &[u8]) -> bool {
    let size = usize::from(req.size);
    if req.kind == KIND_PIO {
        devices.pio_write_string(req.addr as u16, req.size, bytes);
        return true;
    }
    for (i, elem) in bytes.chunks_exact(size).enumerate() {
        let down = req.flags & FLAG_DOWN != 0;
        let Some(addr) = strio::element_addr(req.addr, req.size.into(), down, first + i as u64) else {
            return false;
        };
        let mut v = [0u8; 8];
        v[..size].copy_from_slice(elem);
        devices.mmio_write(addr, req.size, u64::from_le_bytes(v));
    }
    true
}

/// The string's guest buffer is not guest RAM (or wraps): the rest of it is
/// dropped. The hypervisor translated the address from the guest's page
/// tables, so this is the guest pointing string I/O at MMIO or nothing.
fn string_fault(req: &IoRequest, element: u64) {
    if logger::limited() {
        log::warn!("string I/O {:?}: element {} is outside guest RAM; rest dropped", req, element);
    }
}
