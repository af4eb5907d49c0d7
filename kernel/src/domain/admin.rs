//! What the administrator sees of domains and does to them at runtime
//! (the management service's `xl` requests, and the debug keys): plain
//! snapshots and actions, in the hypervisor's own terms; the protocol's
//! types are the management service's business.

use super::{Domain, DomainState, Role, Vcpu, VcpuEvent, DOMAINS};
use crate::sched::Runnable;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use ferrite_devmodel::lapic::Lint1Delivery;

/// One domain as `xl list` shows it.
pub struct DomainSummary {
    pub id: u32,
    pub name: String,
    pub memory_bytes: u64,
    pub vcpus: u32,
    /// Some vCPU is on a host CPU now.
    pub running: bool,
    /// Every vCPU waits for an event.
    pub blocked: bool,
    pub paused: bool,
    /// Powered off or rebooting (not yet gone).
    pub shutdown: bool,
    pub crashed: bool,
    pub dying: bool,
    pub cpu_time_ns: u64,
    pub uptime_ns: u64,
}

/// One vCPU as `xl vcpu-list` shows it.
pub struct VcpuSummary {
    pub dom_id: u32,
    pub dom_name: String,
    pub vcpu: u32,
    pub pcpu: Option<u32>,
    pub running: bool,
    pub blocked: bool,
    pub paused: bool,
    pub time_ns: u64,
    pub affinity: u64,
}

fn all_domains() -> Vec<Arc<Domain>> {
    let mut doms = DOMAINS.lock().clone();
    doms.sort_by_key(|d| d.id);
    doms
}

/// Every live domain, by id.
pub fn summaries() -> Vec<DomainSummary> {
    let now = crate::arch::time::now_ns();
    all_domains()
        .into_iter()
        .map(|d| {
            let vcpus = d.vcpus.lock().clone();
            // As xl shows it: a paused domain is neither running nor blocked.
            let paused = d.is_paused();
            let running = !paused && vcpus.iter().any(|v| v.sched.is_running());
            let blocked = !paused && !vcpus.is_empty() && vcpus.iter().all(|v| v.sched.is_blocked());
            let state = d.state();
            DomainSummary {
                id: d.id,
                name: d.name.clone(),
                memory_bytes: d.mem.ram_bytes(),
                vcpus: d.spec.vcpus,
                running,
                blocked: blocked && !running,
                paused,
                shutdown: matches!(state, DomainState::PoweredOff | DomainState::Rebooting),
                crashed: matches!(state, DomainState::Crashed(_)),
                dying: state == DomainState::Destroyed,
                cpu_time_ns: vcpus.iter().map(|v| v.run_ns.load(Ordering::Relaxed)).sum(),
                uptime_ns: now.saturating_sub(d.created_ns),
            }
        })
        .collect()
}

/// The vCPUs of domain `only`, or of every domain.
pub fn vcpu_summaries(only: Option<u32>) -> Vec<VcpuSummary> {
    let mut out = Vec::new();
    for d in all_domains().into_iter().filter(|d| only.is_none_or(|id| id == d.id)) {
        for v in d.vcpus.lock().iter() {
            out.push(VcpuSummary {
                dom_id: d.id,
                dom_name: d.name.clone(),
                vcpu: v.id,
                pcpu: v.sched.last_pcpu().map(|p| p as u32),
                running: v.sched.is_running(),
                blocked: v.sched.is_blocked(),
                paused: d.is_paused(),
                time_ns: v.run_ns.load(Ordering::Relaxed),
                affinity: v.affinity.load(Ordering::Relaxed),
            });
        }
    }
    out
}

/// Domain `id`'s NICs in `vif = [...]` order: a PVH domain's own, an HVM
/// domain's through its stub domain. None if there is no such domain.
pub fn network_list(id: u32) -> Option<Vec<crate::bridge::VifStats>> {
    let d = get(id)?;
    let mut out: Vec<_> = d.vnets.get().into_iter().flatten().map(|n| n.stats()).collect();
    if let Role::Hvm { stub, .. } = &d.role {
        if let Some(stub) = stub.lock().upgrade() {
            if let Role::Stub(b) = &stub.role {
                out.extend(b.nic_stats());
            }
        }
    }
    Some(out)
}

/// The id of the domain with this id or name.
pub fn lookup(id: Option<u32>, name: &str) -> Option<u32> {
    let doms = DOMAINS.lock();
    match id {
        Some(id) => doms.iter().find(|d| d.id == id).map(|d| d.id),
        None => doms.iter().find(|d| d.name == name).map(|d| d.id),
    }
}

fn get(id: u32) -> Option<Arc<Domain>> {
    DOMAINS.lock().iter().find(|d| d.id == id).cloned()
}

/// Why an action on a domain was refused.
pub enum AdminError {
    NoSuchDomain,
    /// The action does not apply to this domain (the reason says why).
    Refused(String),
}

/// Stops the domain at once, without restarting it (`xl destroy`). A
/// stub domain goes with its guest, and the guest with its stub domain.
pub fn destroy(id: u32) -> Result<(), AdminError> {
    let d = get(id).ok_or(AdminError::NoSuchDomain)?;
    d.shut_down(DomainState::Destroyed);
    Ok(())
}

/// Presses the domain's ACPI power button (`xl shutdown`): the guest is
/// asked, not forced; one that ignores it keeps running.
pub fn press_power_button(id: u32) -> Result<(), AdminError> {
    let d = get(id).ok_or(AdminError::NoSuchDomain)?;
    if let Role::Stub(_) = d.role {
        return Err(AdminError::Refused(String::from("a stub domain stops with its guest; shut the guest down instead")));
    }
    let mut fx = crate::platform::Effects::default();
    let mut devices = d.devices.lock();
    devices.press_power_button(&mut fx);
    if let Some(state) = d.apply(fx, &mut devices) {
        drop(devices);
        d.shut_down(state);
    }
    Ok(())
}

/// What pressing a domain's NMI button did, per vCPU (LINT1's entry
/// decides).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NmiButton {
    pub nmis: u32,
    pub interrupts: u32,
    pub dropped: u32,
}

/// Pulses the domain's NMI line, as a PC's NMI button (or `nmi` in QEMU's
/// monitor) does: the chipset's NMI goes to every CPU's LINT1 pin, and
/// each local APIC's LVT LINT1 entry makes it an NMI, an interrupt or
/// nothing (`Lapic::signal_lint1`). Xen's `xl trigger <dom> nmi` injects
/// the NMI into vCPU 0 directly instead, whatever its APIC says.
pub fn press_nmi_button(id: u32) -> Result<NmiButton, AdminError> {
    let d = get(id).ok_or(AdminError::NoSuchDomain)?;
    if let Role::Stub(_) = d.role {
        return Err(AdminError::Refused(String::from("a stub domain takes no NMIs")));
    }
    let mut seen = NmiButton::default();
    let vcpus = d.vcpus.lock().clone();
    for v in &vcpus {
        match v.signal_lint1() {
            Lint1Delivery::Nmi => seen.nmis += 1,
            Lint1Delivery::Interrupt => seen.interrupts += 1,
            Lint1Delivery::Dropped => seen.dropped += 1,
        }
    }
    Ok(seen)
}

/// Injects an NMI into vCPU `vcpu` directly, whatever its local APIC's
/// LINT1 entry says (`xl trigger <dom> nmi [vcpu]`, as Xen does it).
pub fn inject_nmi(id: u32, vcpu: u32) -> Result<(), AdminError> {
    let d = get(id).ok_or(AdminError::NoSuchDomain)?;
    if let Role::Stub(_) = d.role {
        return Err(AdminError::Refused(String::from("a stub domain takes no NMIs")));
    }
    let target = d.vcpus.lock().get(vcpu as usize).cloned();
    let v = target.ok_or_else(|| AdminError::Refused(format!("the domain has no vCPU {vcpu}")))?;
    v.post(VcpuEvent::Nmi);
    Ok(())
}

/// Presses the domain's reset button (`xl trigger <dom> reset`, `xl reboot
/// -F`): it stops at once, without asking the guest, and follows its
/// `on_reboot` action as if the guest had reset itself.
pub fn press_reset_button(id: u32) -> Result<(), AdminError> {
    let d = get(id).ok_or(AdminError::NoSuchDomain)?;
    if let Role::Stub(_) = d.role {
        return Err(AdminError::Refused(String::from("a stub domain restarts with its guest; reset the guest instead")));
    }
    d.shut_down(DomainState::Rebooting);
    Ok(())
}

/// Sets the hard affinity of one vCPU, or all of them (`xl vcpu-pin`).
pub fn pin_vcpus(id: u32, vcpu: Option<u32>, pcpus: u64) -> Result<(), AdminError> {
    let d = get(id).ok_or(AdminError::NoSuchDomain)?;
    let online = crate::arch::percpu::online_count();
    let usable = if online >= 64 { u64::MAX } else { (1u64 << online) - 1 };
    if pcpus & usable == 0 {
        return Err(AdminError::Refused(alloc::format!("none of those host CPUs exists (this host has {} CPUs)", online)));
    }
    let vcpus = d.vcpus.lock().clone();
    let targets: Vec<&Arc<Vcpu>> = vcpus.iter().filter(|v| vcpu.is_none_or(|n| n == v.id)).collect();
    if targets.is_empty() {
        return Err(AdminError::Refused(alloc::format!("domain {} has no vCPU {}", id, vcpu.unwrap_or(0))));
    }
    for v in targets {
        v.affinity.store(pcpus & usable, Ordering::SeqCst);
        // Runs where it may from its next slice on; a running vCPU is
        // kicked so it gets there soon.
        let r: Arc<dyn Runnable> = v.clone();
        crate::sched::kick_running(&r);
    }
    Ok(())
}

pub fn set_paused_by_id(id: u32, paused: bool) -> Result<(), AdminError> {
    let d = get(id).ok_or(AdminError::NoSuchDomain)?;
    d.set_paused(paused);
    Ok(())
}

/// The domain's console output from position `from` (at most `max`
/// bytes) and the position after it; None once the domain is gone.
pub fn console_output(id: u32, from: u64, max: usize) -> Option<(Vec<u8>, u64)> {
    let d = get(id)?;
    let raw = d.console_raw.lock();
    Some(raw.read_from(from, max))
}

/// Where a console reader starts: the newest `backlog` bytes.
pub fn console_position(id: u32, backlog: u64) -> Option<u64> {
    let d = get(id)?;
    let written = d.console_raw.lock().written();
    Some(written.saturating_sub(backlog))
}

/// Typed input for the domain's console (its UART).
pub fn console_type(id: u32, bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| super::console_input(id, b))
}

/// Whether the domain is dom0 (the control domain the host's life is tied to).
pub fn is_privileged(id: u32) -> bool {
    get(id).is_some_and(|d| d.spec.privileged)
}

/// dom0's id, and the ids of the other domains that are not stub domains
/// (a stub stops with its guest), in one look at the domain list.
pub fn dom0_and_domus() -> (Option<u32>, Vec<u32>) {
    let doms = DOMAINS.lock();
    let dom0 = doms.iter().find(|d| d.spec.privileged).map(|d| d.id);
    let domus = doms.iter().filter(|d| !d.spec.privileged && !matches!(d.role, Role::Stub(_))).map(|d| d.id).collect();
    (dom0, domus)
}
