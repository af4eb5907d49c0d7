//! The machine's own power, Xen's way: its power button (QEMU's
//! `system_powerdown`) stops the host, domUs first through their own ACPI
//! power buttons.

use ferrite_qemu_tests::{base_qemu, guest_module, images, pvh_config_module, test_dir, Vm, BASE_CMDLINE};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Sends one QMP command on a fresh connection (after the capabilities
/// handshake) and returns QEMU's answer line.
fn qmp(socket: &std::path::Path, command: &str) -> String {
    let stream = UnixStream::connect(socket).unwrap_or_else(|e| panic!("cannot connect to QMP at {}: {e}", socket.display()));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).unwrap(); // greeting
    writer.write_all(b"{\"execute\":\"qmp_capabilities\"}\n").unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    writer.write_all(format!("{{\"execute\":\"{command}\"}}\n").as_bytes()).unwrap();
    // Events (such as POWERDOWN) may come before the answer.
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 || line.contains("\"return\"") || line.contains("\"error\"") {
            return line;
        }
    }
}

/// Two domUs run; the machine's power button is pressed. Ferrite asks
/// each domU to stop (its ACPI power button: `guests/console_button.S`
/// powers off when it sees it), and the run ends once both have.
#[test]
fn the_machines_power_button_stops_every_domu_first() {
    let name = "the_machines_power_button_stops_every_domu_first";
    let dir = test_dir(name);
    let qmp_socket = dir.join("qmp.sock");
    let q = base_qemu()
        .smp(2)
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(pvh_config_module(&dir, "left", "console_button", 16))
        .module(pvh_config_module(&dir, "right", "console_button", 16))
        .module(guest_module("console_button", &dir))
        .extra_args(["-qmp".to_string(), format!("unix:{},server=on,wait=off", qmp_socket.display())]);
    let mut vm = Vm::start(name, &dir, q);
    vm.wait_for(r"^\(left\) console_button ready$", Duration::from_secs(120));
    vm.wait_for(r"^\(right\) console_button ready$", Duration::from_secs(120));
    let answer = qmp(&qmp_socket, "system_powerdown");
    assert!(answer.contains("return"), "system_powerdown: {answer}");
    vm.expect_lines(&[r"host: the machine's power button was pressed; powering off the machine once the domains have stopped"]);
    vm.wait_for(r"^\(left\) power button pressed$", Duration::from_secs(60));
    vm.wait_for(r"^\(right\) power button pressed$", Duration::from_secs(60));
    vm.wait_for(r"domain \d+ \(left\) powered off", Duration::from_secs(60));
    vm.wait_for(r"domain \d+ \(right\) powered off", Duration::from_secs(60));
    vm.expect_success();
}

/// dom0 powering off takes the host down, as in Xen: the domUs still
/// running are asked to stop first (their power buttons), and the run ends
/// when they have. dom0 here is `guests/ticker.S` (about 2 s of ticks,
/// then power-off).
#[test]
fn dom0_powering_off_stops_the_domus_then_the_host() {
    let name = "dom0_powering_off_stops_the_domus_then_the_host";
    let dir = test_dir(name);
    let q = base_qemu()
        .smp(2)
        .kernel(&images().multiboot)
        .append(BASE_CMDLINE)
        .module(guest_module("ticker", &dir))
        .module(pvh_config_module(&dir, "left", "console_button", 16))
        .module(pvh_config_module(&dir, "right", "console_button", 16))
        .module(guest_module("console_button", &dir));
    let mut vm = Vm::start(name, &dir, q);
    vm.expect_lines(&[
        r"^\(dom0\) ticker done$",
        r"domain 0 \(dom0\) powered off",
        r"host: dom0 powered off; powering off the machine once the domains have stopped",
    ]);
    vm.wait_for(r"^\(left\) power button pressed$", Duration::from_secs(60));
    vm.wait_for(r"^\(right\) power button pressed$", Duration::from_secs(60));
    vm.expect_success();
}
