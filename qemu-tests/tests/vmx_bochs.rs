//! The Intel VMX backend, under Bochs' VMX model (`corei7_skylake_x`: VMX
//! with EPT, VPID and unrestricted guest; QEMU's TCG emulates only SVM).
//! Ferrite picks VMX at boot from the CPU's vendor and features, turns it
//! on on both CPUs and runs its self-test guest (real mode, protected
//! mode, long mode, port I/O, CPUID, HLT, a hypercall) through the same
//! run loop as under SVM. Then Debian's Linux as a PVH dom0 with two
//! vCPUs reaches its init and powers off (about 3 minutes of Bochs).

use ferrite_qemu_tests::bochs::{Bochs, Machine};
use ferrite_qemu_tests::ferrite_tools::modules::ModuleSpec;
use ferrite_qemu_tests::{linux_cmdline, linux_guest, test_dir};
use std::time::Duration;

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

#[test]
fn a_linux_pvh_dom0_with_two_vcpus_powers_off_under_vmx() {
    let name = "a_linux_pvh_dom0_with_two_vcpus_powers_off_under_vmx";
    let dir = test_dir(name);
    let Some(guest) = linux_guest(name, "cloud-amd64", &dir) else { return };
    let modules = vec![ModuleSpec::new(&guest.vmlinux, linux_cmdline("poweroff")), ModuleSpec::new(&guest.initramfs, "")];
    let machine = Machine { megs: 1024, ..Machine::vmx(2) };
    let mut bochs = Bochs::start_with_module_strings(&dir, "console=com1 dom0_mem=256M dom0_max_vcpus=2", modules, machine);
    bochs.limit = Duration::from_secs(900);
    let text = bochs.wait_for_all(&[
        r"^\(ferrite\) smp: 2 CPUs online, VMX enabled on 2$",
        r"^\(dom0\) FERRITE-INIT cpus=2 ",
        r"^\(ferrite\) domain 0 \(dom0\) powered off$",
    ]);
    eprintln!("[{name}] dom0 powered off after {:.0?} of Bochs", bochs.started.elapsed());
    drop(bochs);
    if let Some(l) = text.lines().find(|l| l.contains("crashed") || l.contains("panic") || l.contains("(ferrite) vmx:")) {
        panic!("[{name}] {l}");
    }
}
