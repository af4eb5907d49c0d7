//! The stub's hypercalls (`ferrite_abi::hypercall`): `vmmcall` with the
//! number in rax and arguments in rdi, rsi, rdx, r10, r8; the result in rax
//! (a value, or a negated [`Errno`]).
//!
//! Buffers are passed by their address: the stub's page tables are an
//! identity map of its RAM, so a pointer's value is the stub-physical
//! address the hypervisor expects.

#![allow(unsafe_code)]

use ferrite_abi::{hypercall as nr, Errno, PowerAction, DEST_GUEST, DEST_STUB};

/// Largest buffer the console hypercalls take per call.
const CONSOLE_CHUNK: usize = 4096;

/// The raw call. The hypervisor reads the argument registers, may read or
/// write stub memory the arguments name, and writes only rax.
fn call(number: u64, args: [u64; 5]) -> u64 {
    let result: u64;
    // SAFETY: `vmmcall` traps to the hypervisor, which changes no register
    // but rax and touches stub memory only where the arguments say (the
    // callers pass buffers they own for the call's duration; the asm block
    // is not `nomem`, so the compiler assumes memory may change).
    unsafe {
        core::arch::asm!(
            "vmmcall",
            inlateout("rax") number => result,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            options(nostack),
        );
    }
    result
}

/// The raw call, for a stub that wants the hypervisor's exact answer to
/// whatever arguments it passes (the hostile test stub).
pub fn raw(number: u64, args: [u64; 5]) -> u64 {
    call(number, args)
}

/// `call` with the result split into a value or an error. Results in
/// -4095..=-1 are errors (as Linux system calls); an error number the stub
/// does not know reads as [`Errno::Io`].
fn checked(number: u64, args: [u64; 5]) -> Result<u64, Errno> {
    let r = call(number, args);
    if (r as i64) < 0 && (r as i64) >= -4095 {
        Err(Errno::from_result(r).unwrap_or(Errno::Io))
    } else {
        Ok(r)
    }
}

fn addr<T>(p: *const T) -> u64 {
    p as u64
}

/// A line (or lines) for the hypervisor console, shown with the stub's name.
pub fn console_write(bytes: &[u8]) {
    for chunk in bytes.chunks(CONSOLE_CHUNK) {
        let _ = checked(nr::CONSOLE_WRITE, [addr(chunk.as_ptr()), chunk.len() as u64, 0, 0, 0]);
    }
}

/// Output of the guest's UART.
pub fn guest_console_write(bytes: &[u8]) {
    for chunk in bytes.chunks(CONSOLE_CHUNK) {
        let _ = checked(nr::GUEST_CONSOLE_WRITE, [addr(chunk.as_ptr()), chunk.len() as u64, 0, 0, 0]);
    }
}

/// Takes pending console input for the guest into `buf`; returns how many
/// bytes arrived.
pub fn console_input(buf: &mut [u8]) -> usize {
    let max = buf.len().min(CONSOLE_CHUNK);
    match checked(nr::CONSOLE_INPUT, [addr(buf.as_mut_ptr()), max as u64, 0, 0, 0]) {
        Ok(n) => (n as usize).min(max),
        Err(_) => 0,
    }
}

/// Blocks until a slot is READY or console input arrived; returns the
/// `WAIT_*` bits saying which (at once if there already is work).
pub fn wait() -> u64 {
    wait_after(false)
}

/// WAIT, first resuming the vCPUs whose slots were answered when
/// `answered` (what IOREQ_DONE does, without a hypercall of its own).
pub fn wait_after(answered: bool) -> u64 {
    let flags = if answered { ferrite_abi::WAIT_FLAG_ANSWERED } else { 0 };
    checked(nr::WAIT, [flags, 0, 0, 0, 0]).unwrap_or(ferrite_abi::WAIT_REQUESTS | ferrite_abi::WAIT_INPUT)
}

/// Slots were moved to DONE: resume their vCPUs.
pub fn ioreq_done() {
    let _ = checked(nr::IOREQ_DONE, [0; 5]);
}

/// Drives guest interrupt line `irq` (ISA IRQ / GSI) to `level`.
pub fn set_irq(irq: u8, level: bool) {
    if let Err(e) = checked(nr::SET_IRQ, [u64::from(irq), u64::from(level), 0, 0, 0]) {
        log::warn!("SET_IRQ {} {}: {:?}", irq, u8::from(level), e);
    }
}

/// A block request: `request` is an encoded `ferrite_abi::BlockRequest`.
pub fn block_io(request: &[u8]) -> Result<(), Errno> {
    checked(nr::BLOCK_IO, [addr(request.as_ptr()), request.len() as u64, 0, 0, 0]).map(|_| ())
}

/// Copies `buf.len()` bytes from `offset` of data source `handle` into `buf`.
pub fn data_read_to_stub(handle: u32, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
    let args = [u64::from(handle), offset, addr(buf.as_mut_ptr()), buf.len() as u64, DEST_STUB];
    checked(nr::DATA_READ, args).map(|_| ())
}

/// Copies `len` bytes from `offset` of data source `handle` to guest-physical
/// `gpa` of the served guest (the hypervisor checks the range).
pub fn data_read_to_guest(handle: u32, offset: u64, gpa: u64, len: u64) -> Result<(), Errno> {
    checked(nr::DATA_READ, [u64::from(handle), offset, gpa, len, DEST_GUEST]).map(|_| ())
}

/// NIC `handle` sends a frame made of `pieces` (address, length): in the
/// guest's RAM (guest-physical) when `in_guest`, else in the stub's.
pub fn net_send(handle: u32, pieces: &[(u64, u32)], in_guest: bool) -> Result<(), Errno> {
    let mut list = [0u8; ferrite_abi::NET_MAX_PIECES * ferrite_abi::net_piece::SIZE];
    if pieces.is_empty() || pieces.len() > ferrite_abi::NET_MAX_PIECES {
        return Err(Errno::Inval);
    }
    for (i, &(a, l)) in pieces.iter().enumerate() {
        let at = i * ferrite_abi::net_piece::SIZE;
        list[at + ferrite_abi::net_piece::ADDR..at + ferrite_abi::net_piece::ADDR + 8].copy_from_slice(&a.to_le_bytes());
        list[at + ferrite_abi::net_piece::LEN..at + ferrite_abi::net_piece::LEN + 4].copy_from_slice(&l.to_le_bytes());
    }
    let dest = if in_guest { DEST_GUEST } else { DEST_STUB };
    checked(nr::NET_SEND, [u64::from(handle), addr(list.as_ptr()), pieces.len() as u64, dest, 0]).map(|_| ())
}

/// The guest asked to be reset or powered off.
pub fn guest_power(action: PowerAction) {
    if let Err(e) = checked(nr::GUEST_POWER, [action as u64, 0, 0, 0, 0]) {
        log::warn!("GUEST_POWER {:?}: {:?}", action, e);
    }
}

/// Ends the stub: `ud2` raises #UD, which without an IDT is a triple fault;
/// the hypervisor destroys the stub and its guest.
pub fn die() -> ! {
    loop {
        // SAFETY: `ud2` only raises an exception; nothing runs after it.
        unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
    }
}
