//! The CPUID a guest sees, built from an allow-list over the host's.
//!
//! Every leaf and every feature bit a guest is shown is named here; a bit
//! that is not named is hidden, whatever the host has. What is allowed is
//! what Ferrite runs correctly for a guest: instruction-set extensions
//! that need no hypervisor help, and the devices it emulates (x2APIC,
//! TSC-deadline). Anything whose MSRs or state Ferrite does not provide
//! (SEV/SME, performance counters, MCA, MTRRs, PKU, AVX-512, XSAVES,
//! speculation-control MSRs, SVM itself) is hidden, so a guest never
//! probes an MSR it would then take #GP on.
//!
//! Leaves that depend on the vCPU's own state (CPUID.1 OSXSAVE follows
//! the guest's CR4, CPUID.1 APIC follows its APIC base, CPUID.0xD sizes
//! follow its XCR0) are computed from [`VcpuView`], since CPUID is run on
//! the host with the host's CR4 and XCR0.

/// The vCPU state some leaves reflect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuView {
    /// This vCPU's APIC id (= its index).
    pub vcpu: u32,
    /// vCPUs in the domain.
    pub vcpus: u32,
    /// Guest CR4.OSXSAVE.
    pub osxsave: bool,
    /// Guest IA32_APIC_BASE.EN.
    pub apic_enabled: bool,
    /// Guest XCR0.
    pub xcr0: u64,
    /// The XCR0 bits the host lets guests enable.
    pub xcr0_supported: u64,
}

/// Ferrite's hypervisor leaves (0x4000_0000): "FerriteHV" padded.
pub const HV_SIGNATURE: [u32; 3] = [
    u32::from_le_bytes(*b"Ferr"),
    u32::from_le_bytes(*b"iteH"),
    u32::from_le_bytes(*b"V\0\0\0"),
];

/// Highest basic leaf offered (0xD: XSAVE).
pub const MAX_BASIC_LEAF: u32 = 0xD;
/// Highest extended leaf offered (0x8000_0008: address sizes, core count).
/// This hides 0x8000_000A (SVM) and 0x8000_001F (SEV/SME) among others.
pub const MAX_EXTENDED_LEAF: u32 = 0x8000_0008;

const fn bits(list: &[u32]) -> u32 {
    let mut m = 0;
    let mut i = 0;
    while i < list.len() {
        m |= 1 << list[i];
        i += 1;
    }
    m
}

/// CPUID.1:ECX: SSE3, PCLMULQDQ, SSSE3, FMA, CX16, SSE4.1, SSE4.2, MOVBE,
/// POPCNT, AES, XSAVE, AVX, F16C, RDRAND. x2APIC (21), TSC-deadline (24)
/// and the hypervisor bit (31) are set separately; OSXSAVE (27) follows CR4.
const LEAF1_ECX: u32 = bits(&[0, 1, 9, 12, 13, 19, 20, 22, 23, 25, 26, 28, 29, 30]);
/// CPUID.1:EDX: FPU, VME, DE, PSE, TSC, MSR, PAE, CX8, SEP, PGE, CMOV,
/// PAT, PSE36, CLFSH, MMX, FXSR, SSE, SSE2. APIC (9) follows the APIC base,
/// HTT (28) the vCPU count. Hidden: MCE, MTRR, MCA, DS, ACPI, SS, TM, PBE.
const LEAF1_EDX: u32 = bits(&[0, 1, 2, 3, 4, 5, 6, 8, 11, 13, 15, 16, 17, 19, 23, 24, 25, 26]);
/// CPUID.7.0:EBX: FSGSBASE, BMI1, AVX2, SMEP, BMI2, ERMS, ADX, SMAP,
/// CLFLUSHOPT, CLWB, SHA. Hidden: TSC_ADJUST, HLE/RTM, INVPCID, PQM/PQE,
/// MPX, AVX-512, Intel PT.
const LEAF7_EBX: u32 = bits(&[0, 3, 5, 7, 8, 9, 19, 20, 23, 24, 29]);
/// CPUID.7.0:ECX: UMIP, VAES, VPCLMULQDQ, RDPID (TSC_AUX is per vCPU).
/// Hidden: PKU/OSPKE, LA57, CET, AVX-512 extensions.
const LEAF7_ECX: u32 = bits(&[2, 9, 10, 22]);
/// CPUID.0x8000_0001:ECX: LAHF, ABM/LZCNT, SSE4A, MisAlignSSE,
/// 3DNowPrefetch, XOP, FMA4, TBM. Hidden: SVM, ExtApicSpace, OSVW, IBS,
/// SKINIT, WDT, TOPOEXT, perf counters, MWAITX.
const EXT1_ECX: u32 = bits(&[0, 5, 6, 7, 8, 11, 16, 21]);
/// CPUID.0x8000_0001:EDX: the AMD copies of leaf 1's bits, plus SYSCALL,
/// NX, MMXEXT, FFXSR, 1 GiB pages, RDTSCP, LM, 3DNow!Ext, 3DNow!.
const EXT1_EDX: u32 = bits(&[0, 1, 2, 3, 4, 5, 6, 8, 11, 13, 15, 16, 17, 20, 22, 23, 24, 25, 26, 27, 29, 30, 31]);

/// CPUID.1:EDX[9] and 0x8000_0001:EDX[9]: an APIC, enabled.
const APIC_BIT: u32 = 1 << 9;

/// CPUID.0x8000_0008:EBX[20]: EFER.LMSLE is not supported.
const LMSLE_UNSUPPORTED: u32 = 1 << 20;

/// XSAVE components Ferrite switches for guests: x87, SSE, AVX.
pub const XCR0_GUEST_MAX: u64 = 0b111;

/// The CPUID values for `leaf`/`subleaf` as `view`'s vCPU sees them, from
/// the host's values through `host`.
pub fn guest_cpuid(host: &dyn Fn(u32, u32) -> [u32; 4], leaf: u32, subleaf: u32, view: &VcpuView) -> [u32; 4] {
    let basic_max = host(0, 0)[0].min(MAX_BASIC_LEAF);
    let ext_max = host(0x8000_0000, 0)[0].min(MAX_EXTENDED_LEAF);
    let vcpus = view.vcpus.clamp(1, 255);
    match leaf {
        0 => {
            let [_, b, c, d] = host(0, 0);
            [basic_max, b, c, d]
        }
        1..=MAX_BASIC_LEAF if leaf <= basic_max => basic_leaf(host, leaf, subleaf, view, vcpus),
        0x4000_0000 => [0x4000_0001, HV_SIGNATURE[0], HV_SIGNATURE[1], HV_SIGNATURE[2]],
        0x4000_0001 => [0; 4],
        0x8000_0000 => {
            let [_, b, c, d] = host(0x8000_0000, 0);
            [ext_max, b, c, d]
        }
        0x8000_0001..=MAX_EXTENDED_LEAF if leaf <= ext_max => extended_leaf(host, leaf, view, vcpus),
        // Out of range: Intel CPUs answer with the highest basic leaf; zeros
        // are what AMD gives and what guests handle.
        _ => [0; 4],
    }
}

fn basic_leaf(host: &dyn Fn(u32, u32) -> [u32; 4], leaf: u32, subleaf: u32, view: &VcpuView, vcpus: u32) -> [u32; 4] {
    let [a, b, c, d] = host(leaf, subleaf);
    match leaf {
        1 => {
            // EBX: brand/CLFLUSH size kept; logical CPU count and APIC id ours.
            let b = (b & 0x0000_FFFF) | (vcpus << 16) | ((view.vcpu & 0xFF) << 24);
            let mut c = (c & LEAF1_ECX) | (1 << 21) | (1 << 24) | (1 << 31);
            if view.osxsave && c & (1 << 26) != 0 {
                c |= 1 << 27;
            }
            let mut d = d & LEAF1_EDX;
            if view.apic_enabled {
                d |= 1 << 9;
            }
            if vcpus > 1 {
                d |= 1 << 28;
            }
            [a, b, c, d]
        }
        // Cache and TLB descriptors (Intel): harmless, kept.
        2 => [a, b, c, d],
        // Deterministic cache parameters (Intel): cores per package ours,
        // sharing left to one core.
        4 => [(a & 0x3FF) | ((vcpus - 1).min(63) << 26), b, c, d],
        7 if subleaf == 0 => [0, b & LEAF7_EBX, c & LEAF7_ECX, 0],
        0xD => xsave_leaf(host, subleaf, view),
        // MONITOR/MWAIT (hidden), thermal/power, DCA, performance
        // monitoring, x2APIC topology (the vCPU count is in leaf 1 and
        // 0x8000_0008): none.
        _ => [0; 4],
    }
}

fn xsave_leaf(host: &dyn Fn(u32, u32) -> [u32; 4], subleaf: u32, view: &VcpuView) -> [u32; 4] {
    let supported = view.xcr0_supported & XCR0_GUEST_MAX;
    // The size of the XSAVE area for a set of components: the end of the
    // furthest one (standard format).
    let size_for = |mask: u64| -> u32 {
        let mut size = 512 + 64;
        for i in 2..64 {
            if mask & (1 << i) != 0 {
                let [sz, off, _, _] = host(0xD, i);
                size = size.max(off + sz);
            }
        }
        size
    };
    match subleaf {
        0 => [supported as u32, size_for(view.xcr0 & supported), size_for(supported), 0],
        // XSAVEOPT and XGETBV with ECX=1 only: no XSAVEC/XSAVES (IA32_XSS).
        1 => [host(0xD, 1)[0] & 0b101, 0, 0, 0],
        i if i < 64 && supported & (1 << i) != 0 && i >= 2 => {
            let [a, b, _, _] = host(0xD, i);
            [a, b, 0, 0]
        }
        _ => [0; 4],
    }
}

fn extended_leaf(host: &dyn Fn(u32, u32) -> [u32; 4], leaf: u32, view: &VcpuView, vcpus: u32) -> [u32; 4] {
    let [a, b, c, d] = host(leaf, 0);
    match leaf {
        // AMD's copy of the APIC bit (APM vol. 3, "same as
        // CPUID Fn0000_0001_EDX[APIC]") follows the APIC base too, where
        // the host has it.
        0x8000_0001 => [a, b, c & EXT1_ECX, (d & EXT1_EDX) | (d & APIC_BIT & if view.apic_enabled { APIC_BIT } else { 0 })],
        // Brand string and cache/TLB information: kept.
        0x8000_0002..=0x8000_0006 => [a, b, c, d],
        // Power management: only "the TSC runs at a constant rate".
        0x8000_0007 => [0, 0, 0, d & (1 << 8)],
        // Address sizes kept; no extended features (IBPB and the like
        // need MSRs) but "EFER.LMSLE unsupported" (bit 20), which is true
        // for guests (`cr::efer_allowed`); the core count ours.
        0x8000_0008 => [a, LMSLE_UNSUPPORTED, (vcpus - 1) & 0xFF, 0],
        _ => [0; 4],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host like Bochs' Ryzen model: SEV, SVM, perf counters, PKU,
    /// AVX-512 bits and every feature bit set.
    fn ryzen(leaf: u32, subleaf: u32) -> [u32; 4] {
        match (leaf, subleaf) {
            (0, _) => [0x10, 0x6874_7541, 0x444D_4163, 0x6974_6E65],
            (0xD, 0) => [0xE7, 0x988, 0x988, 0],
            (0xD, 1) => [0xF, 0x988, 0, 0],
            (0xD, 2) => [256, 576, 0, 0],
            (0xD, i) if i < 64 => [64, 1000 + i, 0, 0],
            (0x8000_0000, _) => [0x8000_0021, 0, 0, 0],
            (0x8000_001F, _) => [0x1_000F, 0x16F, 0x1FD, 1],
            _ => [0xFFFF_FFFF; 4],
        }
    }

    fn view() -> VcpuView {
        VcpuView { vcpu: 2, vcpus: 4, osxsave: false, apic_enabled: true, xcr0: 1, xcr0_supported: 0b111 }
    }

    fn get(leaf: u32, subleaf: u32, v: &VcpuView) -> [u32; 4] {
        guest_cpuid(&ryzen, leaf, subleaf, v)
    }

    #[test]
    fn sev_svm_and_high_leaves_are_hidden() {
        let v = view();
        assert_eq!(get(0x8000_0000, 0, &v)[0], MAX_EXTENDED_LEAF);
        assert_eq!(get(0x8000_001F, 0, &v), [0; 4]);
        assert_eq!(get(0x8000_000A, 0, &v), [0; 4]);
        assert_eq!(get(0, 0, &v)[0], MAX_BASIC_LEAF);
        assert_eq!(get(0x10, 0, &v), [0; 4]);
        let ext1 = get(0x8000_0001, 0, &v);
        assert_eq!(ext1[2] & (1 << 2), 0, "SVM");
        assert_eq!(ext1[2] & (1 << 23), 0, "core perf counters");
        assert_eq!(ext1[2] & (1 << 9), 0, "OSVW");
    }

    #[test]
    fn leaf1_reflects_the_vcpu() {
        let mut v = view();
        let [_, b, c, d] = get(1, 0, &v);
        assert_eq!(b >> 24, 2, "APIC id");
        assert_eq!((b >> 16) & 0xFF, 4, "logical CPUs");
        assert_ne!(c & (1 << 31), 0, "hypervisor");
        assert_eq!(c & (1 << 27), 0, "OSXSAVE follows CR4");
        assert_eq!(c & (1 << 5), 0, "VMX");
        assert_eq!(c & (1 << 3), 0, "MONITOR");
        assert_ne!(d & (1 << 9), 0, "APIC");
        assert_ne!(d & (1 << 28), 0, "HTT");
        assert_eq!(d & ((1 << 7) | (1 << 12) | (1 << 14)), 0, "MCE, MTRR, MCA");
        v.osxsave = true;
        v.apic_enabled = false;
        v.vcpus = 1;
        let [_, _, c, d] = get(1, 0, &v);
        assert_ne!(c & (1 << 27), 0);
        assert_eq!(d & (1 << 9), 0, "APIC follows APIC_BASE.EN");
        assert_eq!(d & (1 << 28), 0);
        // AMD's alias of the APIC bit follows it too.
        assert_eq!(get(0x8000_0001, 0, &v)[3] & (1 << 9), 0);
        v.apic_enabled = true;
        assert_ne!(get(0x8000_0001, 0, &v)[3] & (1 << 9), 0);
    }

    #[test]
    fn leaf7_hides_pku_avx512_and_tsx() {
        let [a, b, c, d] = get(7, 0, &view());
        assert_eq!(a, 0);
        assert_eq!(b & ((1 << 16) | (1 << 4) | (1 << 11) | (1 << 1)), 0);
        assert_eq!(c & ((1 << 3) | (1 << 4) | (1 << 16)), 0);
        assert_eq!(d, 0);
        assert_eq!(get(7, 1, &view()), [0; 4]);
    }

    #[test]
    fn xsave_leaf_follows_guest_xcr0() {
        let mut v = view();
        let [a, b, c, _] = get(0xD, 0, &v);
        assert_eq!(a, 0b111, "x87, SSE, AVX only");
        assert_eq!(b, 576, "x87+SSE legacy area and header");
        assert_eq!(c, 832, "with AVX");
        v.xcr0 = 0b111;
        assert_eq!(get(0xD, 0, &v)[1], 832);
        assert_eq!(get(0xD, 1, &v)[0], 0b101, "no XSAVEC/XSAVES");
        assert_eq!(get(0xD, 2, &v)[..2], [256, 576]);
        assert_eq!(get(0xD, 5, &v), [0; 4], "AVX-512 state not offered");
    }

    #[test]
    fn core_count_and_power_leaves() {
        let v = view();
        assert_eq!(get(0x8000_0008, 0, &v)[2], 3);
        assert_eq!(get(0x8000_0008, 0, &v)[1], 1 << 20, "only: EFER.LMSLE unsupported");
        assert_eq!(get(0x8000_0007, 0, &v), [0, 0, 0, 1 << 8]);
        assert_eq!(get(6, 0, &v), [0; 4]);
        assert_eq!(get(0xA, 0, &v), [0; 4]);
        assert_eq!(get(0xB, 0, &v), [0; 4]);
    }

    #[test]
    fn hypervisor_leaves() {
        let v = view();
        assert_eq!(get(0x4000_0000, 0, &v), [0x4000_0001, HV_SIGNATURE[0], HV_SIGNATURE[1], HV_SIGNATURE[2]]);
        assert_eq!(get(0x4000_0001, 0, &v), [0; 4]);
    }

    #[test]
    fn a_small_host_clamps_the_maxima() {
        let host = |leaf: u32, _: u32| match leaf {
            0 => [5, 0, 0, 0],
            0x8000_0000 => [0x8000_0004, 0, 0, 0],
            _ => [u32::MAX; 4],
        };
        let v = view();
        assert_eq!(guest_cpuid(&host, 0, 0, &v)[0], 5);
        assert_eq!(guest_cpuid(&host, 7, 0, &v), [0; 4]);
        assert_eq!(guest_cpuid(&host, 0x8000_0000, 0, &v)[0], 0x8000_0004);
        assert_eq!(guest_cpuid(&host, 0x8000_0008, 0, &v), [0; 4]);
    }
}
