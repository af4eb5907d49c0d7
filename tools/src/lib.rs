//! Host-side tooling for Ferrite: the `ferrite` CLI (`build`, `up`, `iso`,
//! `test`) and the reusable pieces the QEMU integration tests share with it.
//!
//! One idea per module:
//! * [`build`]: builds the hypervisor and stub-domain images with cargo and
//!   derives the PVH-only copy of the hypervisor;
//! * [`multiboot`]: finding and neutralising the multiboot1 header (pure);
//! * [`modules`]: `PATH[=ARGS]` boot-module specifications (pure);
//! * [`qemu`]: the QEMU command-line builder and accelerator probe;
//! * [`iso`]: GRUB rescue ISOs (grub.cfg generation and `grub-mkrescue`);
//! * [`deps`]: checking host programs and naming the Debian packages;
//! * [`cli`]: the `ferrite` argument parser (pure);
//! * [`initramfs`]: newc cpio archives and the busybox test initramfs;
//! * [`guest_images`]: Debian guest-image cache (owned elsewhere);
//! * [`guestasm`]: assembling the tiny PVH test guests in `qemu-tests/guests`;
//! * [`installed_disk`]: a raw disk image laid out like an installed Debian
//!   system (MBR, GRUB, ext4 root) for booting Linux from a disk;
//! * [`nbd_server`]: `ferrite nbd-serve`, an image file served over NBD
//!   (the toolstack's end of `file:` disks), and its background start;
//! * [`bench`]: `ferrite bench`, exit round-trip costs under `-icount`;
//!   [`bench_sched`]: `ferrite bench sched`, IPI and wake-up latencies;
//!   [`bench_disks`]: `ferrite bench disks`, disk requests on every path;
//!   [`bench_net`]: `ferrite bench net`, TCP and ping over the bridges;
//! * [`fuzz`]: `ferrite fuzz`, the coverage-instrumented build and run of
//!   the fuzz driver (`fuzz/`).

pub mod bench;
pub mod bench_disks;
pub mod bench_net;
pub mod bench_sched;
pub mod bench_xl;
pub mod build;
pub mod cli;
pub mod deps;
pub mod fuzz;
pub mod guestasm;
pub mod initramfs;
pub mod installed_disk;
pub mod iso;
pub mod modules;
pub mod multiboot;
pub mod nbd_server;
pub mod qemu;
pub mod stress;
pub mod xl;

pub mod guest_images;
