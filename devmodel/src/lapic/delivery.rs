//! Where interrupt messages go: destination matching (physical, logical
//! flat and cluster, x2APIC clusters), the lowest-priority choice, and the
//! LINT1 pin.

use super::*;

/// What a signal on LINT1 became ([`Lapic::signal_lint1`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lint1Delivery {
    /// Masked, or a delivery mode that delivers nothing here.
    Dropped,
    /// The caller injects an NMI into this CPU.
    Nmi,
    /// A fixed interrupt is now pending in the IRR.
    Interrupt,
}

/// Lowest-priority delivery: which one of the APICs an interrupt message
/// matched (`candidates`: an index, e.g. the vCPU's, and its APIC) gets it.
/// The one with the lowest processor priority among those that can take
/// it now (hardware- and software-enabled), ties to the lowest index: the
/// SDM leaves the choice to the platform (10.6.2.4; a P4's chipset uses
/// the TPR), Xen picks the lowest PPR too (round-robin among ties), KVM
/// hashes the vector, QEMU's TCG takes the lowest-numbered APIC. `None`
/// when no candidate is enabled: the message is lost, as on hardware when
/// software sends one to disabled APICs (10.6.2.1).
pub fn lowest_priority<'a>(
    candidates: impl IntoIterator<Item = (usize, &'a Lapic)>,
) -> Option<usize> {
    candidates
        .into_iter()
        .filter(|(_, l)| l.enabled())
        .min_by_key(|&(i, l)| (l.ppr(), i))
        .map(|(i, _)| i)
}

impl Lapic {
    /// Whether this APIC is a target of a destination as sent by an IPI,
    /// an I/O APIC entry or an MSI (`x2apic`: `dest` is a 32-bit x2APIC
    /// destination). Shorthands are the caller's business.
    pub fn matches_dest(&self, dest: u32, mode: DestMode, x2apic: bool) -> bool {
        if self.mode() == ApicMode::Disabled {
            return false;
        }
        let in_x2 = self.mode() == ApicMode::X2Apic;
        match mode {
            DestMode::Physical => {
                if x2apic {
                    dest == 0xffff_ffff || dest == self.cfg.id
                } else {
                    let d = dest & 0xff;
                    d == 0xff || (!in_x2 && d == self.cfg.id & 0xff) || (in_x2 && d == self.cfg.id)
                }
            }
            DestMode::Logical => {
                if in_x2 {
                    // All ones is the broadcast: 32 bits from an x2APIC
                    // sender, 8 from an xAPIC-format message (the I/O
                    // APIC's), as KVM takes it.
                    if (x2apic && dest == 0xffff_ffff) || (!x2apic && dest & 0xff == 0xff) {
                        return true;
                    }
                    // Cluster in bits 31:16, a member bitmap in 15:0 (the
                    // LDR is derived from the x2APIC ID, SDM 10.12.10.2).
                    (dest >> 16) == (self.ldr >> 16) && (dest & self.ldr & 0xffff) != 0
                } else {
                    // The 8-bit message destination address (MDA) against
                    // the LDR's logical ID, as the DFR's model says
                    // (SDM 10.6.2.2); all ones reaches every APIC in
                    // either model, whatever its LDR.
                    let d = dest & 0xff;
                    if d == 0xff {
                        return true;
                    }
                    let ldr = self.ldr >> 24;
                    if self.dfr >> 28 == 0xf {
                        ldr & d != 0 // flat: a bitmap of up to 8 APICs
                    } else {
                        // cluster: bits 7:4 the cluster, 3:0 its members
                        (d >> 4) == (ldr >> 4) && (d & ldr & 0xf) != 0
                    }
                }
            }
        }
    }

    /// Whether IPIs and interrupt messages reach this APIC at all: not
    /// while it is hardware-disabled (IA32_APIC_BASE.EN clear), when the
    /// CPU is "functionally equivalent to an IA-32 processor without an
    /// on-chip APIC" (SDM 10.4.3). Shorthand IPIs skip it too.
    pub fn on_bus(&self) -> bool {
        self.mode() != ApicMode::Disabled
    }

    // ---- local interrupt pins ----

    /// The NMI signal of the platform (a PC's chipset NMI: the NMI button,
    /// `nmi` in QEMU's monitor) arrived on this CPU's LINT1 pin. The LVT
    /// LINT1 entry decides what it becomes: masked (also whenever the APIC
    /// is software-disabled, SDM 10.4.7.2) it is dropped; delivery mode
    /// NMI makes it an NMI; Fixed sets the entry's vector in the IRR (edge:
    /// LINT1 has no level mode, SDM 10.5.1), as QEMU and KVM do. SMI, INIT
    /// and ExtINT are dropped (no SMM; nothing a PC wires that way).
    /// A hardware-disabled APIC passes the signal straight to the core as
    /// an NMI: the CPU is then one without an APIC, whose NMI pin this is
    /// (as the 8259's INTR reaches such a CPU, [`Self::accepts_pic_interrupts`]).
    pub fn signal_lint1(&mut self) -> Lint1Delivery {
        if self.mode() == ApicMode::Disabled {
            return Lint1Delivery::Nmi;
        }
        let lvt = self.lvt[LVT_LINT1];
        if lvt & LVT_MASKED != 0 {
            return Lint1Delivery::Dropped;
        }
        match DeliveryMode::from_bits(lvt >> 8) {
            DeliveryMode::Nmi => Lint1Delivery::Nmi,
            DeliveryMode::Fixed if self.accept((lvt & 0xff) as u8, false) => {
                Lint1Delivery::Interrupt
            }
            _ => Lint1Delivery::Dropped,
        }
    }
}
