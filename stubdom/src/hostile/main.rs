//! `ferrite-stubdom-hostile`: a stub domain that attacks the hypervisor, for
//! tests only (`qemu-tests/tests/hostile_stub.rs`). It serves no devices;
//! it sends every malformed hypercall and tampers with every field of the
//! shared pages the hypervisor reads, one case at a time, and prints a
//! verdict line for each:
//!
//! ```text
//! HOSTILE <case> -> <what the hypervisor did>: PASS
//! ```
//!
//! (`FAIL` when the hypervisor did anything but refuse or ignore it), then
//! `HOSTILE summary: N cases, P passed, F failed`, and powers its guest off.
//!
//! The guest's name picks what it does: `flood` floods the console through
//! CONSOLE_WRITE (`cases::console_flood`); any other name runs every other
//! case (`cases::run_all`). The guest is expected to be the `ioloop`
//! firmware of the test (an endless `out 0x4f0, al; in al, 0x4f0` loop in
//! real mode), so that there always is a request to tamper with and every
//! answer shows up in the guest's next write.

#![no_std]
#![no_main]
#![deny(unsafe_code)]

extern crate alloc;

mod cases;
mod tally;

use ferrite_abi::{hypercall as nr, PowerAction, StubConfig};
use ferrite_stubdom::hypercall;

ferrite_stubdom::entry_point!(hostile_main);

fn hostile_main(config: StubConfig) -> ! {
    log::info!("hostile stub for guest {} ({}): attacking the hypervisor", config.guest_id, config.guest_name);
    let tally = if config.guest_name == "flood" { cases::console_flood() } else { cases::run_all(&config) };
    log::info!("HOSTILE summary: {} cases, {} passed, {} failed", tally.passed + tally.failed, tally.passed, tally.failed);
    // The end: the guest (and with it this stub) powers off.
    hypercall::raw(nr::GUEST_POWER, [PowerAction::PowerOff as u64, 0, 0, 0, 0]);
    loop {
        hypercall::wait();
    }
}
