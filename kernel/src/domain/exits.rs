//! What a domain's vCPU meets during a time slice: the `Platform` the run
//! loop (`vcpu`) calls for each exit it cannot finish itself (port and
//! MMIO accesses to the in-hypervisor devices and the LAPIC, MSRs,
//! hypercalls, HLT), and the timers and interrupts checked between
//! entries.

use super::*;

/// The platform as one vCPU of a domain sees it during a time slice.
pub(super) struct VcpuPlatform<'a> {
    pub(super) domain: &'a Arc<Domain>,
    pub(super) vcpu: &'a Arc<Vcpu>,
    /// When to give up the pCPU, and the host timer's next event.
    pub(super) sched: crate::sched::SliceClock,
    /// Set when the guest did something that ends the domain.
    pub(super) shutdown: Option<DomainState>,
    /// The guest executed HLT.
    pub(super) halted: bool,
    /// The earliest LAPIC/device deadline (TSC ns) as of the last check;
    /// timers are only advanced when it has passed or something changed.
    pub(super) deadline_ns: Option<u64>,
    /// A device or LAPIC was touched since the deadline was computed.
    pub(super) deadline_stale: bool,
    /// An access was sent to the stub domain during this run.
    pub(super) waiting: bool,
    /// TSC nanoseconds taken before the latest entry.
    pub(super) now_ns: u64,
    /// The LAPIC's task priority class (TPR bits 7:4, the guest's CR8),
    /// kept here so that putting it into the CPU before every entry takes
    /// no lock: only this vCPU's own accesses change it while it runs.
    pub(super) cr8: u8,
    /// The TPR holds back an interrupt waiting in the IRR (as of the last
    /// `pending_interrupt`): the guest's CR8 writes must exit.
    pub(super) cr8_exits: bool,
}

/// IA32_APIC_BASE.EN.
const APIC_BASE_ENABLE: u64 = 1 << 11;

/// MSRs with nothing behind them that guests commonly touch: reads give
/// the value here, writes are accepted and dropped.
fn benign_msr(msr: u32) -> Option<u64> {
    Some(match msr {
        0x8B => 0,                              // microcode patch level
        0x1A0 => 1,                             // MISC_ENABLE: fast strings
        0xC001_0015 => 0,                       // AMD HWCR
        0xC001_0010 => 0,                       // AMD SYSCFG
        0xC001_1029 => 0,                       // AMD DE_CFG
        0xC001_0140 | 0xC001_0141 => 0,         // AMD OSVW
        // AMD's legacy performance counters (PERF_CTL0-3, PERF_CTR0-3):
        // they have no CPUID bit and always exist; with no virtual PMU
        // they count nothing, as under KVM and Xen without a vPMU.
        0xC001_0000..=0xC001_0007 => 0,
        0xC001_001F => 0,                       // AMD NB_CFG
        _ => return None,
    })
}

impl VcpuPlatform<'_> {
    fn effects(&mut self, fx: Effects, devices: &mut Devices) {
        if let Some(state) = self.domain.apply(fx, devices) {
            self.shutdown = Some(state);
        }
    }

    fn lapic_effect(&mut self, effect: LapicEffect) {
        // Called after every guest write to the LAPIC (MSR or MMIO): such a
        // write may set an IRR bit (self-IPI) or unblock one (EOI, TPR).
        self.vcpu.irr_hint.store(true, Ordering::Release);
        match effect {
            LapicEffect::None => {}
            LapicEffect::Ipi(req) => self.domain.send_ipi(&req, self.vcpu.id as usize),
            LapicEffect::EoiBroadcast(vector) => {
                let mut fx = Effects::default();
                let mut d = self.domain.devices.lock();
                d.eoi(vector, &mut fx);
                self.effects(fx, &mut d);
            }
        }
    }

    fn ioreq(&self) -> Option<&IoreqServer> {
        match &self.domain.role {
            Role::Hvm { ioreq, .. } => Some(ioreq),
            _ => None,
        }
    }

    /// Whether the PIC may interrupt this vCPU now (HVM vCPU 0 in
    /// virtual-wire mode) and has something.
    fn pic_interrupt(&self) -> bool {
        if self.vcpu.id != 0 || !matches!(self.domain.role, Role::Hvm { .. }) {
            return false;
        }
        self.domain.pic_output.load(Ordering::SeqCst) && self.vcpu.lapic.lock().accepts_pic_interrupts()
    }

    /// Sends an access to the stub domain; this vCPU then waits.
    fn forward(&mut self, mut req: ferrite_abi::IoRequest, pending: vcpu::PendingIo) {
        let Some(ioreq) = self.ioreq() else { return };
        req.vcpu = self.vcpu.id;
        *self.vcpu.io_wait.lock() = Some(pending);
        ioreq.send(&req);
        self.waiting = true;
    }

    /// An MMIO access outside the hypervisor's devices (HVM): ROM reads
    /// come from the image, ROM writes are dropped, the rest goes to the
    /// stub domain. Returns the value for reads.
    fn remote_mmio(&mut self, gpa: u64, size: u8, write: bool, value: u64) -> u64 {
        if self.domain.mem.is_rom(gpa) {
            let mut buf = [0u8; 8];
            let n = usize::from(size.min(8));
            if !write && self.domain.mem.read(gpa, &mut buf[..n]).is_ok() {
                return u64::from_le_bytes(buf);
            }
            return u64::MAX;
        }
        let access = MmioAccess { gpa, size, write, value: if write { value } else { 0 } };
        let step = self.vcpu.mmio_replay.lock().access(access);
        match step {
            MmioStep::Replay(answer) => answer,
            MmioStep::Send => {
                self.forward(vcpu::mmio_request(gpa, size, write, value), vcpu::PendingIo::Mmio);
                0
            }
            // An earlier access of this instruction waits: it runs again.
            MmioStep::Skip => 0,
            MmioStep::TooMany => {
                self.shutdown = Some(DomainState::Crashed(format!("an instruction made more than {} MMIO accesses at {:#x}", ferrite_x86::mmio_replay::MAX_ACCESSES, gpa)));
                0
            }
        }
    }

    /// The offset of `gpa` in the LAPIC's page at its base. Also while
    /// the LAPIC is disabled or in x2APIC mode (SDM 10.12.2: its MMIO then
    /// behaves as a disabled xAPIC's): the page reads as all ones and
    /// ignores writes (`Lapic::read_mmio`), where it used to be a hole
    /// that crashed the domain.
    fn lapic_page(&self, gpa: u64) -> Option<u64> {
        let base = self.vcpu.lapic.lock().mmio_base();
        (gpa >= base && gpa < base + 0x1000).then(|| gpa - base)
    }

    /// The NIC whose window `gpa` is in, and the offset there.
    fn vnet_at(&self, gpa: u64) -> Option<(&Arc<crate::vnet::NetDevice>, u64)> {
        self.domain.vnets.get()?.iter().find_map(|n| Some((n, n.offset(gpa)?)))
    }

    /// A guest access wrote the LAPIC (`write`): done under its lock, with
    /// the task priority read back for the CPU's copy (CR8).
    /// A guest write to the LAPIC. The cached deadline goes stale only if
    /// the write moved the timer's: an EOI or an IPI does not, and
    /// recomputing every device's deadline after each was a measurable
    /// share of the hypervisor's work under interrupt load.
    fn write_lapic<T>(&mut self, write: impl FnOnce(&mut Lapic) -> T) -> T {
        let mut lapic = self.vcpu.lapic.lock();
        let before = lapic.next_timer_deadline_ns();
        let r = write(&mut lapic);
        self.cr8 = lapic.cr8();
        if lapic.next_timer_deadline_ns() != before {
            self.deadline_stale = true;
        }
        r
    }
}

impl Platform for VcpuPlatform<'_> {
    fn cpuid(&mut self, leaf: u32, subleaf: u32, guest: vcpu::GuestCpuidState) -> [u32; 4] {
        let apic_enabled = self.vcpu.lapic.lock().apic_base() & APIC_BASE_ENABLE != 0;
        vcpu::guest_cpuid(leaf, subleaf, &guest.view(self.vcpu.id, self.domain.spec.vcpus, apic_enabled))
    }

    fn io_in(&mut self, port: u16, size: u8) -> u32 {
        // Reads do not move device deadlines (line changes they cause are
        // delivered right here), so the cached deadline stays valid.
        let mut fx = Effects::default();
        let mut d = self.domain.devices.lock();
        let v = d.port_read(port, size, &mut fx);
        self.effects(fx, &mut d);
        // No device: the bus floats high.
        v.unwrap_or(u32::MAX >> (32 - 8 * u32::from(size)))
    }

    fn io_out(&mut self, port: u16, size: u8, value: u32) {
        let mut fx = Effects::default();
        let mut d = self.domain.devices.lock();
        // Only the PIT, RTC and ACPI PM have deadlines (`Devices::
        // next_deadline_ns`): a UART byte leaves the cached one valid.
        let timers = d.is_timer_port(port, size);
        if timers {
            self.deadline_stale = true;
        }
        d.port_write(port, size, value, &mut fx);
        self.effects(fx, &mut d);
        drop(d);
        if timers && self.vcpu.id != 0 {
            // vCPU 0 runs the shared timers: if it is blocked, its cached
            // wake-up time may be stale now.
            if let Some(v0) = self.domain.vcpus.lock().first() {
                v0.timers_changed.store(true, Ordering::SeqCst);
                v0.wake_at_ns.store(0, Ordering::SeqCst);
                crate::sched::deadline_lowered(0);
            }
        }
    }

    fn halt(&mut self) -> bool {
        // Keep running when an interrupt is already waiting; else block.
        let lapic_pending = self.vcpu.lapic.lock().highest_pending().is_some();
        if lapic_pending || self.pic_interrupt() || self.vcpu.nmi_pending.load(Ordering::SeqCst) {
            return true;
        }
        self.halted = true;
        false
    }

    fn hypercall(&mut self, regs: &mut GuestRegs) -> Option<u64> {
        if let Role::Stub(backends) = &self.domain.role {
            match backends.hypercall(self.domain, regs) {
                StubCall::Continue => {}
                StubCall::Wait => {
                    self.halted = true;
                    self.vcpu.in_wait.store(true, Ordering::SeqCst);
                }
                StubCall::BlockIo => {
                    self.halted = true;
                    self.vcpu.in_block_io.store(true, Ordering::SeqCst);
                }
            }
            return None;
        }
        // No hypercalls are defined for guests yet: -ENOSYS, as Xen says.
        regs.rax = (-38i64) as u64;
        None
    }

    fn port_is_remote(&mut self, port: u16, size: u8) -> bool {
        matches!(self.domain.role, Role::Hvm { .. }) && !self.domain.ports.is_local(port, size)
    }

    fn send_ioreq(&mut self, req: ferrite_abi::IoRequest, pending: vcpu::PendingIo) {
        self.forward(req, pending);
    }

    fn buffer_write(&mut self, port: u16, size: u8, value: u32) -> bool {
        self.ioreq().is_some_and(|io| io.try_buffer_write(port, size, value))
    }

    fn take_io_response(&mut self) -> Option<(vcpu::PendingIo, u64)> {
        let ioreq = self.ioreq()?;
        let mut wait = self.vcpu.io_wait.lock();
        let pending = (*wait)?;
        let data = ioreq.take_answer(self.vcpu.id)?;
        *wait = None;
        if pending == vcpu::PendingIo::Mmio {
            self.vcpu.mmio_replay.lock().answered(data);
        }
        Some((pending, data))
    }

    fn waiting_for_io(&self) -> bool {
        self.waiting
    }

    fn replay_pending(&self) -> bool {
        matches!(self.domain.role, Role::Hvm { .. }) && self.vcpu.mmio_replay.lock().replay_pending()
    }

    fn mmio_instruction_begin(&mut self) {
        self.vcpu.mmio_replay.lock().begin();
    }

    fn mmio_instruction_done(&mut self) {
        self.vcpu.mmio_replay.lock().clear();
    }

    fn msr_read(&mut self, msr: u32) -> Option<u64> {
        match msr {
            0x1B => Some(self.vcpu.lapic.lock().apic_base()),
            0x10 => Some(crate::arch::cpu::rdtsc().wrapping_add(self.domain.tsc_offset())),
            // The LAPIC model keeps the deadline in host TSC (its timers run
            // on host time); the guest sees it in its own.
            MSR_TSC_DEADLINE => self.vcpu.lapic.lock().read_msr(MSR_TSC_DEADLINE, &HostClock).ok().map(|d| {
                if d == 0 {
                    0
                } else {
                    d.wrapping_add(self.domain.tsc_offset())
                }
            }),
            m if Lapic::handles_msr(m) => self.vcpu.lapic.lock().read_msr(m, &HostClock).ok(),
            m => benign_msr(m),
        }
    }

    fn msr_write(&mut self, msr: u32, value: u64) -> bool {
        // Only LAPIC writes move a deadline (`write_lapic` says when).
        match msr {
            0x1B => {
                self.vcpu.irr_hint.store(true, Ordering::Release);
                self.write_lapic(|l| l.set_apic_base(value)).is_ok()
            }
            // Writing the TSC moves the domain's offset (all its vCPUs keep
            // one TSC, as on one machine).
            0x10 => {
                let offset = value.wrapping_sub(crate::arch::cpu::rdtsc());
                self.domain.tsc_offset.store(offset, Ordering::SeqCst);
                true
            }
            MSR_TSC_DEADLINE => {
                let host = if value == 0 { 0 } else { value.wrapping_sub(self.domain.tsc_offset()) };
                let r = self.write_lapic(|l| l.write_msr(MSR_TSC_DEADLINE, host, &HostClock));
                match r {
                    Ok(effect) => {
                        self.lapic_effect(effect);
                        true
                    }
                    Err(_) => false,
                }
            }
            m if Lapic::handles_msr(m) => {
                let r = self.write_lapic(|l| l.write_msr(m, value, &HostClock));
                match r {
                    Ok(effect) => {
                        self.lapic_effect(effect);
                        true
                    }
                    Err(_) => false,
                }
            }
            m => benign_msr(m).is_some(),
        }
    }

    fn guest_memory(&self) -> Option<&GuestMemory> {
        Some(&self.domain.mem)
    }

    fn is_mmio(&mut self, gpa: u64) -> bool {
        self.lapic_page(gpa).is_some()
            || (platform::IOAPIC_BASE..platform::IOAPIC_BASE + 0x1000).contains(&gpa)
            || crate::vdisk::at(&self.domain.vdisks, gpa).is_some()
            || self.domain.vsock.get().is_some_and(|v| v.offset(gpa).is_some())
            || self.vnet_at(gpa).is_some()
            // HVM: everything that is not RAM is some device's (or ROM).
            || (matches!(self.domain.role, Role::Hvm { .. }) && !self.domain.mem.contains(gpa, 1))
    }

    fn mmio_read(&mut self, gpa: u64, size: u8) -> u64 {
        if let Some(off) = self.lapic_page(gpa) {
            return self.vcpu.lapic.lock().read_mmio(off, size, &HostClock);
        }
        if let Some((disk, off)) = crate::vdisk::at(&self.domain.vdisks, gpa) {
            return disk.mmio_read(off, size);
        }
        if let Some((v, off)) = self.domain.vsock.get().and_then(|v| Some((v, v.offset(gpa)?))) {
            return v.mmio_read(off, size);
        }
        if let Some((n, off)) = self.vnet_at(gpa) {
            return n.mmio_read(off, size);
        }
        if !(platform::IOAPIC_BASE..platform::IOAPIC_BASE + 0x1000).contains(&gpa) {
            return self.remote_mmio(gpa, size, false, 0);
        }
        self.domain.devices.lock().ioapic_read(gpa - platform::IOAPIC_BASE, size)
    }

    fn mmio_write(&mut self, gpa: u64, size: u8, value: u64) {
        // Of the MMIO devices only the LAPIC has a timer (`write_lapic`).
        if let Some(off) = self.lapic_page(gpa) {
            let effect = self.write_lapic(|l| l.write_mmio(off, size, value, &HostClock));
            self.lapic_effect(effect);
            return;
        }
        if let Some((disk, off)) = crate::vdisk::at(&self.domain.vdisks, gpa) {
            if let Some(domain) = self.vcpu.domain.upgrade() {
                let host: Arc<dyn crate::virtio_host::DeviceHost> = domain;
                disk.mmio_write(&host, off, size, value);
            }
            return;
        }
        if let Some((v, off)) = self.domain.vsock.get().and_then(|v| Some((v, v.offset(gpa)?))) {
            v.mmio_write(&**self.domain, off, size, value);
            return;
        }
        if let Some((n, off)) = self.vnet_at(gpa) {
            n.mmio_write(&**self.domain, off, size, value);
            return;
        }
        if !(platform::IOAPIC_BASE..platform::IOAPIC_BASE + 0x1000).contains(&gpa) {
            self.remote_mmio(gpa, size, true, value);
            return;
        }
        let mut fx = Effects::default();
        let mut d = self.domain.devices.lock();
        d.ioapic_write(gpa - platform::IOAPIC_BASE, size, value, &mut fx);
        self.effects(fx, &mut d);
    }

    fn pending_interrupt(&mut self) -> Option<u8> {
        // Checked before every entry: skip the LAPIC lock while its IRR
        // is known to be empty (see `Vcpu::irr_hint`).
        self.cr8_exits = false;
        if self.vcpu.irr_hint.load(Ordering::Acquire) {
            let lapic = self.vcpu.lapic.lock();
            let vector = lapic.highest_pending();
            self.cr8_exits = vector.is_none() && lapic.tpr_holds_back();
            if !lapic.irr_nonempty() {
                self.vcpu.irr_hint.store(false, Ordering::Release);
            }
            drop(lapic);
            if vector.is_some() {
                return vector;
            }
        }
        // The PIC's vector is only known at the acknowledge cycle.
        self.pic_interrupt().then_some(0)
    }

    fn cr8(&self) -> u8 {
        self.cr8
    }

    fn write_cr8(&mut self, value: u64) -> bool {
        // Lowering it may let a held-back interrupt in.
        self.vcpu.irr_hint.store(true, Ordering::Release);
        self.write_lapic(|l| l.write_cr8(value)).is_ok()
    }

    fn cr8_writes_exit(&self) -> bool {
        self.cr8_exits
    }

    fn nmi_pending(&self) -> bool {
        self.vcpu.nmi_pending.load(Ordering::SeqCst)
    }

    fn nmi_injected(&mut self) {
        self.vcpu.nmi_pending.store(false, Ordering::SeqCst);
    }

    fn interrupt_injected(&mut self, vector: u8) {
        self.vcpu.lapic.lock().ack(vector);
    }

    fn acknowledge_interrupt(&mut self) -> Option<u8> {
        {
            let mut lapic = self.vcpu.lapic.lock();
            if let Some(vector) = lapic.highest_pending() {
                lapic.ack(vector);
                return Some(vector);
            }
        }
        if self.pic_interrupt() {
            let mut d = self.domain.devices.lock();
            let vector = d.pic_acknowledge();
            self.domain.pic_output.store(d.pic_pending(), Ordering::SeqCst);
            return vector;
        }
        None
    }

    fn before_entry(&mut self) {
        if self.vcpu.timers_changed.load(Ordering::Relaxed) {
            self.vcpu.timers_changed.store(false, Ordering::SeqCst);
            self.deadline_stale = true;
        }
        let now = crate::arch::time::now_ns();
        self.now_ns = now;
        let due = self.deadline_ns.is_some_and(|d| d <= now);
        if due || self.deadline_stale {
            if self.vcpu.lapic.lock().tick(now) {
                self.vcpu.irr_hint.store(true, Ordering::Release);
            }
            // A stub domain has no timed devices (it takes no interrupts).
            if self.vcpu.id == 0 && !matches!(self.domain.role, Role::Stub(_)) {
                let mut fx = Effects::default();
                let mut d = self.domain.devices.lock();
                d.tick(&mut fx);
                self.effects(fx, &mut d);
            }
            self.deadline_ns = self.vcpu.next_deadline_ns(self.domain);
            self.deadline_stale = false;
        }
        // The scheduler's next event: the slice's end, an earlier yield
        // for a woken vCPU, or a blocked vCPU's deadline.
        let sched = self.sched.next_event_ns();
        crate::arch::apic::arm_timer_at_ns(self.deadline_ns.map_or(sched, |d| d.min(sched)));
    }

    fn after_exit(&mut self) {
        crate::sched::take_pending_interrupts();
    }

    fn should_stop(&mut self) -> bool {
        self.shutdown.is_some()
            || self.halted
            || !self.domain.is_running()
            || self.domain.is_paused()
            || self.sched.should_yield(self.now_ns)
    }
}

