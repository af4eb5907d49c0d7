//! The Intel VMX backend, under Bochs' VMX model (`corei7_skylake_x`: VMX
//! with EPT, VPID and unrestricted guest; QEMU's TCG emulates only SVM).
//! Ferrite picks VMX at boot from the CPU's vendor and features, turns it
//! on on both CPUs and runs its self-test guest (real mode, protected
//! mode, long mode, port I/O, CPUID, HLT, a hypercall) through the same
//! run loop as under SVM.

use ferrite_qemu_tests::bochs::{Bochs, Machine};
use ferrite_qemu_tests::test_dir;

#[test]
fn the_self_test_passes_under_vmx() {
    let name = "the_self_test_passes_under_vmx";
    let dir = test_dir(name);
    let mut bochs = Bochs::start(&dir, "console=com1", Vec::new(), Machine::vmx(2));
    let text = bochs.wait_for_all(&[
        r"^\(ferrite\) virtualization: vmx: ept=yes unrestricted_guest=yes vpid=yes",
        r"^\(ferrite\) smp: 2 CPUs online, VMX enabled on 2$",
        r"^\(ferrite\) selftest: PASS",
        r"^\(ferrite\) boot complete",
    ]);
    drop(bochs);
    if let Some(l) = text.lines().find(|l| l.contains("FAIL") || l.contains("panic") || l.contains("(ferrite) vmx:")) {
        panic!("[{name}] {l}");
    }
}
