//! What every host virtio device needs: `virtio-drivers`' DMA and MMIO
//! hooks (`FerriteHal`), its view of PCI configuration space, and a PCI
//! transport for a function whose BARs the hypervisor can reach.

use super::pci::{self, ConfigAccess, PciAddress};
use crate::mm;
use alloc::format;
use alloc::string::String;
use core::ptr::NonNull;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// The PCI vendor ID of every virtio device.
pub const VENDOR_ID: u16 = 0x1AF4;

/// Turns memory decoding and bus mastering on for a virtio function and
/// brings up its PCI transport. Refuses BARs the hypervisor cannot reach.
pub fn pci_transport(config: ConfigAccess, at: PciAddress) -> Result<PciTransport, String> {
    for bar in pci::memory_bars(&config, at) {
        if bar.address == 0 {
            return Err(format!("BAR {} is unassigned", bar.index));
        }
        // Only the low 4 GiB is sure to be identity mapped (as device
        // memory) by the host page tables.
        if bar.address.saturating_add(bar.size) > 1 << 32 {
            return Err(format!("BAR {} at {:#x} is above 4 GiB, which the hypervisor does not map", bar.index, bar.address));
        }
    }
    config.set_command_bits(at, pci::COMMAND_MEMORY_SPACE | pci::COMMAND_BUS_MASTER);
    let mut root = PciRoot::new(VirtioConfigSpace(config));
    let function = DeviceFunction { bus: at.bus, device: at.device, function: at.function };
    PciTransport::new::<FerriteHal, _>(&mut root, function).map_err(|e| format!("virtio PCI transport: {}", e))
}

/// `virtio-drivers`' view of configuration space.
struct VirtioConfigSpace(ConfigAccess);

impl ConfigurationAccess for VirtioConfigSpace {
    fn read_word(&self, function: DeviceFunction, offset: u8) -> u32 {
        self.0.read32(PciAddress { bus: function.bus, device: function.device, function: function.function }, offset.into())
    }

    fn write_word(&mut self, function: DeviceFunction, offset: u8, data: u32) {
        self.0.write32(PciAddress { bus: function.bus, device: function.device, function: function.function }, offset.into(), data)
    }

    unsafe fn unsafe_clone(&self) -> Self {
        // `ConfigAccess` holds no state (port accesses take a lock), so
        // copies never step on each other.
        VirtioConfigSpace(self.0)
    }
}

/// DMA and MMIO for `virtio-drivers`: DMA memory comes from the frame
/// allocator, and everything is identity mapped, so a physical address is
/// the pointer and a buffer's address is what the device is given.
pub struct FerriteHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned frames owned by nobody
// else until `dma_dealloc`; `mmio_phys_to_virt` returns the identity
// mapping of device memory below 4 GiB; `share` hands the device the
// buffer's own (identity-mapped) address, so nothing needs copying back.
unsafe impl Hal for FerriteHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Some(pa) = mm::alloc_contiguous(pages, 1) else {
            return (0, NonNull::dangling()); // `Dma::new` reports 0 as DmaError
        };
        // SAFETY: the frames were just allocated for this caller and are
        // identity mapped.
        unsafe { core::ptr::write_bytes(pa as *mut u8, 0, pages * 4096) };
        (pa, NonNull::new(pa as *mut u8).expect("the frame allocator never hands out page 0"))
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        mm::free_contiguous(paddr, pages);
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // `probe` refuses devices with BARs above 4 GiB, so this holds.
        assert!(paddr != 0 && paddr + size as u64 <= 1 << 32, "virtio MMIO region {:#x}+{:#x} is not identity mapped", paddr, size);
        NonNull::new(paddr as *mut u8).expect("checked non-zero above")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.cast::<u8>().as_ptr() as u64
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
