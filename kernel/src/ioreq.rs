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
use ferrite_abi::{slot, IoRequest, IOREQ_SLOTS, IOREQ_SLOT_SIZE, STATE_DONE, STATE_FREE, STATE_READY};
use spin::Mutex;

pub struct IoreqServer {
    page: SharedPage,
    /// The stub domain's vCPU, woken when there is work.
    stub_vcpu: Mutex<Option<Arc<dyn Runnable>>>,
    /// Console input arrived for the guest since the stub last looked.
    input: AtomicBool,
}

impl IoreqServer {
    pub fn new() -> Option<Self> {
        Some(IoreqServer { page: SharedPage::new()?, stub_vcpu: Mutex::new(None), input: AtomicBool::new(false) })
    }

    pub fn page_hpa(&self) -> u64 {
        self.page.hpa()
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
        let ready = (0..slots).any(|i| self.page.load_u32(i * IOREQ_SLOT_SIZE + slot::STATE) == STATE_READY);
        let input = self.input.swap(false, Ordering::SeqCst);
        (if ready { ferrite_abi::WAIT_REQUESTS } else { 0 }) | (if input { ferrite_abi::WAIT_INPUT } else { 0 })
    }
}
