//! The I/O-request page between an HVM guest and its stub domain.
//!
//! One 64-byte slot per guest vCPU (layout in `ferrite_abi::slot`). A
//! guest vCPU whose access the hypervisor does not emulate writes the
//! request into its slot, marks it READY, notifies the stub and blocks.
//! The stub answers in place, marks the slot DONE and makes the IOREQ_DONE
//! hypercall, which wakes the guest vCPU; it reads the answer, frees the
//! slot and finishes the instruction. The stub can scribble over the page
//! at any time: the hypervisor only ever takes a slot's `data` (masked to
//! the access size by the caller) from it, and only from a DONE slot whose
//! vCPU is waiting.

use crate::mm::shared::SharedPage;
use crate::sched::{self, Runnable};
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, Ordering};
use ferrite_abi::{bufio, slot, BufferedWrite, IoRequest, BUFIO_ENTRIES, BUFIO_RANGES, IOREQ_SLOTS, IOREQ_SLOT_SIZE, STATE_DONE, STATE_FREE, STATE_READY};
use core::sync::atomic::AtomicU32;
use spin::Mutex;

pub struct IoreqServer {
    page: SharedPage,
    /// The buffered-write ring (`ferrite_abi::bufio`).
    bufio: SharedPage,
    /// Entries written to the ring; the hypervisor's own count (the copy
    /// in the page is for the stub), advanced under `bufio_lock`.
    produced: AtomicU32,
    bufio_lock: Mutex<()>,
    /// The stub domain's vCPU, woken when there is work.
    stub_vcpu: Mutex<Option<Arc<dyn Runnable>>>,
    /// Console input arrived for the guest since the stub last looked.
    input: AtomicBool,
    /// Frames arrived in a NIC's receive ring since the stub last looked.
    net: AtomicBool,
}

impl IoreqServer {
    pub fn new() -> Option<Self> {
        Some(IoreqServer {
            page: SharedPage::new()?,
            bufio: SharedPage::new()?,
            produced: AtomicU32::new(0),
            bufio_lock: Mutex::new(()),
            stub_vcpu: Mutex::new(None),
            input: AtomicBool::new(false),
            net: AtomicBool::new(false),
        })
    }

    pub fn page_hpa(&self) -> u64 {
        self.page.hpa()
    }

    pub fn bufio_hpa(&self) -> u64 {
        self.bufio.hpa()
    }

    /// Queues a port write the stub said it can take late, without
    /// stopping the guest. False when the port is not one of those or the
    /// ring is full (then the write goes through a slot).
    pub fn try_buffer_write(&self, port: u16, size: u8, value: u32) -> bool {
        let listed = (0..BUFIO_RANGES).any(|i| {
            let pair = self.bufio.load_u32(bufio::RANGES + i * 4);
            let (first, last) = (pair as u16, (pair >> 16) as u16);
            first <= port && port <= last
        });
        if !listed {
            return false;
        }
        let _guard = self.bufio_lock.lock();
        let produced = self.produced.load(Ordering::SeqCst);
        let consumed = self.bufio.load_u32(bufio::CONSUMED);
        // A stub that lies about CONSUMED only garbles its own guest's writes.
        if produced.wrapping_sub(consumed) as usize >= BUFIO_ENTRIES {
            return false;
        }
        let entry = BufferedWrite { port, size, value }.encode();
        self.bufio.write(bufio::ENTRIES + (produced as usize % BUFIO_ENTRIES) * bufio::ENTRY_SIZE, &entry);
        let was_empty = produced == consumed;
        let produced = produced.wrapping_add(1);
        self.produced.store(produced, Ordering::SeqCst);
        self.bufio.store_u32(bufio::PRODUCED, produced);
        drop(_guard);
        // Entries already waiting mean the stub was told and has not got
        // to them: it drains up to PRODUCED, and its WAIT does not block
        // while the ring is not empty.
        if was_empty {
            self.notify();
        }
        true
    }

    pub fn set_stub_vcpu(&self, vcpu: Option<Arc<dyn Runnable>>) {
        *self.stub_vcpu.lock() = vcpu;
    }

    fn offset(vcpu: u32) -> usize {
        assert!((vcpu as usize) < IOREQ_SLOTS, "vCPU {vcpu} has no I/O-request slot");
        vcpu as usize * IOREQ_SLOT_SIZE
    }

    /// Publishes vCPU `req.vcpu`'s request and tells the stub.
    pub fn send(&self, req: &IoRequest) {
        let off = Self::offset(req.vcpu);
        let mut bytes = [0u8; IOREQ_SLOT_SIZE];
        req.encode(&mut bytes);
        // The fields up to and including DATA (the rest is reserved).
        self.page.write(off + slot::KIND, &bytes[slot::KIND..slot::DATA + 8]);
        self.page.store_u32(off + slot::STATE, STATE_READY);
        self.notify();
    }

    /// Wakes the stub (it looks at the slots when it runs).
    pub fn notify(&self) {
        let stub = self.stub_vcpu.lock().clone();
        if let Some(v) = stub {
            sched::wake(&v);
        }
    }

    /// Console input arrived for the guest: tell the stub.
    pub fn notify_input(&self) {
        self.input.store(true, Ordering::SeqCst);
        self.notify();
    }

    /// Frames arrived in a NIC's receive ring: tell the stub.
    pub fn notify_net(&self) {
        self.net.store(true, Ordering::SeqCst);
        self.notify();
    }

    /// Whether vCPU `vcpu`'s request has been answered.
    pub fn is_done(&self, vcpu: u32) -> bool {
        self.page.load_u32(Self::offset(vcpu) + slot::STATE) == STATE_DONE
    }

    /// Takes the answer of vCPU `vcpu`'s request, freeing its slot.
    pub fn take_answer(&self, vcpu: u32) -> Option<u64> {
        let off = Self::offset(vcpu);
        if !self.page.compare_exchange_u32(off + slot::STATE, STATE_DONE, STATE_FREE) {
            return None;
        }
        let mut data = [0u8; 8];
        self.page.read(off + slot::DATA, &mut data);
        Some(u64::from_le_bytes(data))
    }

    /// For the stub's WAIT: what there is to do (`WAIT_*` bits; 0 =
    /// nothing), looking at the first `slots` slots. Takes the input flag.
    pub fn pending_work(&self, slots: u32) -> u64 {
        let slots = (slots as usize).min(IOREQ_SLOTS);
        let ready = (0..slots).any(|i| self.page.load_u32(i * IOREQ_SLOT_SIZE + slot::STATE) == STATE_READY)
            || self.bufio.load_u32(bufio::CONSUMED) != self.produced.load(Ordering::SeqCst);
        let input = self.input.swap(false, Ordering::SeqCst);
        let net = self.net.swap(false, Ordering::SeqCst);
        (if ready { ferrite_abi::WAIT_REQUESTS } else { 0 })
            | (if input { ferrite_abi::WAIT_INPUT } else { 0 })
            | (if net { ferrite_abi::WAIT_NET } else { 0 })
    }
}
