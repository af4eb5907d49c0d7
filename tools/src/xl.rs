//! `ferrite xl`: manage the domains of a running Ferrite, as Xen's `xl`
//! does, through the hypervisor's management service (protocol in the
//! `ferrite-mgmt` crate). Subcommands, flags and output follow xl.
//!
//! * [`target`]: where the service is and the key (flags, environment,
//!   the session file `ferrite up` writes, `/etc/ferrite/xl.key`);
//! * [`client`]: connection, login, request/response;
//! * [`format`]: xl's tables;
//! * [`create`]: config checking and upload;
//! * [`console`]: the attached console.

mod client;
mod console;
mod create;
mod format;
pub mod link;
pub mod target;

#[cfg(test)]
mod fake_service;
#[cfg(test)]
mod tests;

use anyhow::{anyhow, bail, Context, Result};
use client::Client;
use ferrite_mgmt::{DomRef, DomainInfo, Request, Response, Trigger};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
/// For `ferrite up`: a fresh key for the Ferrite it boots, and the session
/// file through which `ferrite xl` finds that Ferrite.
#[allow(unused_imports)] // until `ferrite up` starts the management service
pub use target::{generate_secret, read_session_file, write_session_file};
pub use target::{session_file_path, ConnectOpts, Target};

pub const USAGE: &str = "\
ferrite xl: manage the domains of a running Ferrite, like Xen's xl

USAGE:
    ferrite xl [--host H] [--port P] [--key-file F] SUBCOMMAND [ARGS]
        The management service is found through the flags, else
        FERRITE_XL_HOST / FERRITE_XL_PORT / FERRITE_XL_KEY_FILE, else the
        session file target/ferrite-up/xl-session that `ferrite up` writes,
        else 127.0.0.1:7070 (in a Ferrite dom0, where /dev/vsock exists: the
        hypervisor over vsock, as --host vsock) with the key in
        /etc/ferrite/xl.key (64 hex digits).

SUBCOMMANDS (as in xl; DOM is a domain name or id):
    list [-l] [DOM]                 domains (-l: as JSON)
    info [FIELD]                    the host; with FIELD, only that value
    uptime [DOM...]                 how long each domain has run
    dmesg [-c]                      the hypervisor's log (-c: then clear it)
    create [-c] CONFIG [KEY=VALUE...]
                                    check CONFIG (xl.cfg format; KEY=VALUE lines
                                    override it), send it with the kernel, ramdisk
                                    and firmware it names, start the domain
                                    (-c: then attach its console)
    console DOM                     attach the domain's console; Ctrl-] detaches
    shutdown [-w] [-a] [DOM]        ask DOM (-a: every domain but dom0) to power
                                    off (-w: wait up to 60 s until it is gone)
    reboot [-F] DOM                 ask DOM to reboot; Ferrite's guests have no PV
                                    control interface, so this needs -F: press
                                    DOM's reset button (as xl does for HVM guests
                                    without PV drivers; unsaved data is lost)
    trigger DOM nmi|reset|power [VCPU]
                                    nmi: an NMI into VCPU (default 0); reset: the
                                    reset button; power: the ACPI power button
    destroy DOM                     stop DOM at once
    pause DOM / unpause DOM
    vcpu-list [DOM...]              vCPUs, where they run and their affinity
    vcpu-pin DOM VCPU|all CPUS      pin vCPUs to host CPUs (CPUS: 0-1,3 or all)
    network-list DOM...             the domains' NICs: MAC, bridge, model and
                                    packet counters
";

/// A parsed `ferrite xl` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XlArgs {
    pub connect: ConnectOpts,
    pub cmd: XlCmd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XlCmd {
    Help,
    List { long: bool, dom: Option<DomRef> },
    Info { field: Option<String> },
    Uptime { doms: Vec<DomRef> },
    Dmesg { clear: bool },
    Destroy(DomRef),
    Shutdown { wait: bool, all: bool, dom: Option<DomRef> },
    Reboot { force: bool, dom: DomRef },
    Trigger { dom: DomRef, trigger: Trigger, vcpu: u32 },
    Pause(DomRef),
    Unpause(DomRef),
    VcpuList(Vec<DomRef>),
    VcpuPin { dom: DomRef, vcpu: Option<u32>, pcpus: u64 },
    NetworkList(Vec<DomRef>),
    Create { console: bool, config: PathBuf, overrides: Vec<String> },
    Console(DomRef),
}

/// Splits a subcommand's arguments into its flags (each a letter; `long`
/// maps `--word` to its letter) and the rest.
fn flags(sub: &str, args: &[String], allowed: &[(char, &str)]) -> Result<(Vec<char>, Vec<String>)> {
    let mut set = Vec::new();
    let mut rest = Vec::new();
    for a in args {
        if let Some(word) = a.strip_prefix("--") {
            let (c, _) =
                allowed.iter().find(|(_, w)| *w == word).ok_or_else(|| anyhow!("xl {sub}: unknown option {a}"))?;
            set.push(*c);
        } else if a.len() > 1 && a.starts_with('-') {
            for c in a[1..].chars() {
                if !allowed.iter().any(|(f, _)| *f == c) {
                    bail!("xl {sub}: unknown option -{c}");
                }
                set.push(c);
            }
        } else {
            rest.push(a.clone());
        }
    }
    Ok((set, rest))
}

fn count(sub: &str, rest: &[String], min: usize, max: usize, what: &str) -> Result<()> {
    if rest.len() < min || rest.len() > max {
        bail!("xl {sub} takes {what} (see `ferrite xl help`)");
    }
    Ok(())
}

/// Parses the arguments after `ferrite xl`.
pub fn parse_args(args: &[String]) -> Result<XlArgs> {
    let mut connect = ConnectOpts::default();
    let mut i = 0;
    while i < args.len() && args[i].starts_with("--") {
        let (flag, inline) = match args[i].split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (args[i].clone(), None),
        };
        if flag == "--help" {
            return Ok(XlArgs { connect, cmd: XlCmd::Help });
        }
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                args.get(i).cloned().ok_or_else(|| anyhow!("{flag} needs a value"))?
            }
        };
        match flag.as_str() {
            "--host" => connect.host = Some(value),
            "--port" => {
                connect.port = Some(value.parse().map_err(|_| anyhow!("--port: {value:?} is not a port number"))?)
            }
            "--key-file" => connect.key_file = Some(PathBuf::from(value)),
            _ => bail!("unknown option {flag} for `ferrite xl` (see `ferrite xl help`)"),
        }
        i += 1;
    }
    let Some(sub) = args.get(i) else {
        return Ok(XlArgs { connect, cmd: XlCmd::Help });
    };
    let args = &args[i + 1..];
    let sub = sub.as_str();
    let dom = |s: &String| DomRef::parse(s);
    let cmd = match sub {
        "help" | "-h" => XlCmd::Help,
        "list" => {
            let (f, rest) = flags(sub, args, &[('l', "long")])?;
            count(sub, &rest, 0, 1, "at most one domain")?;
            XlCmd::List { long: f.contains(&'l'), dom: rest.first().map(dom) }
        }
        "info" => {
            let (_, rest) = flags(sub, args, &[])?;
            count(sub, &rest, 0, 1, "at most one field name")?;
            XlCmd::Info { field: rest.first().cloned() }
        }
        "uptime" => XlCmd::Uptime { doms: flags(sub, args, &[])?.1.iter().map(dom).collect() },
        "dmesg" => {
            let (f, rest) = flags(sub, args, &[('c', "clear")])?;
            count(sub, &rest, 0, 0, "no arguments besides -c")?;
            XlCmd::Dmesg { clear: f.contains(&'c') }
        }
        "reboot" => {
            let (f, rest) = flags(sub, args, &[('F', "fallback")])?;
            count(sub, &rest, 1, 1, "one domain")?;
            XlCmd::Reboot { force: f.contains(&'F'), dom: dom(&rest[0]) }
        }
        "trigger" => {
            let (_, rest) = flags(sub, args, &[])?;
            count(sub, &rest, 2, 3, "DOM nmi|reset|power [VCPU]")?;
            let trigger = match rest[1].as_str() {
                "nmi" => Trigger::Nmi,
                "reset" => Trigger::Reset,
                "power" => Trigger::Power,
                "init" | "sleep" | "s3resume" => bail!("xl trigger: Ferrite has no {} trigger (nmi, reset and power work)", rest[1]),
                other => bail!("xl trigger: invalid trigger {other:?} (nmi, reset or power)"),
            };
            let vcpu = match rest.get(2) {
                None => 0,
                Some(v) => v.parse().map_err(|_| anyhow!("xl trigger: invalid argument {v:?} as VCPU"))?,
            };
            XlCmd::Trigger { dom: dom(&rest[0]), trigger, vcpu }
        }
        "destroy" | "pause" | "unpause" | "console" => {
            let (_, rest) = flags(sub, args, &[])?;
            count(sub, &rest, 1, 1, "one domain")?;
            let d = dom(&rest[0]);
            match sub {
                "destroy" => XlCmd::Destroy(d),
                "pause" => XlCmd::Pause(d),
                "unpause" => XlCmd::Unpause(d),
                _ => XlCmd::Console(d),
            }
        }
        "shutdown" => {
            let (f, rest) = flags(sub, args, &[('w', "wait"), ('a', "all")])?;
            let all = f.contains(&'a');
            if all {
                count(sub, &rest, 0, 0, "no domain with -a")?;
            } else {
                count(sub, &rest, 1, 1, "one domain, or -a for all")?;
            }
            XlCmd::Shutdown { wait: f.contains(&'w'), all, dom: rest.first().map(dom) }
        }
        "vcpu-list" => XlCmd::VcpuList(flags(sub, args, &[])?.1.iter().map(dom).collect()),
        "network-list" => {
            let (_, rest) = flags(sub, args, &[])?;
            count(sub, &rest, 1, usize::MAX, "one or more domains")?;
            XlCmd::NetworkList(rest.iter().map(dom).collect())
        }
        "vcpu-pin" => {
            let (_, rest) = flags(sub, args, &[])?;
            count(sub, &rest, 3, 4, "DOM VCPU|all CPUS")?;
            if rest.len() == 4 && rest[3] != "-" {
                bail!("xl vcpu-pin: Ferrite has no soft affinity; leave out the fourth argument");
            }
            let vcpu = match rest[1].as_str() {
                "all" => None,
                v => Some(v.parse().map_err(|_| anyhow!("xl vcpu-pin: invalid argument {v:?} as VCPU"))?),
            };
            XlCmd::VcpuPin { dom: dom(&rest[0]), vcpu, pcpus: format::parse_cpus(&rest[2])? }
        }
        "create" => {
            let (f, rest) = flags(sub, args, &[('c', "console")])?;
            let Some((config, overrides)) = rest.split_first() else {
                bail!("xl create takes a configuration file (see `ferrite xl help`)");
            };
            if let Some(bad) = overrides.iter().find(|o| !o.contains('=')) {
                bail!("xl create: {bad:?} is not a KEY=VALUE override");
            }
            XlCmd::Create { console: f.contains(&'c'), config: PathBuf::from(config), overrides: overrides.to_vec() }
        }
        other => bail!("unknown xl subcommand {other:?} (see `ferrite xl help`)"),
    };
    Ok(XlArgs { connect, cmd })
}

/// The process's side of a command: output streams, the console's input
/// and timings (tests shorten them).
pub struct Io<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    /// What `console` forwards (taken once).
    pub input: Option<Box<dyn Read + Send>>,
    pub input_is_terminal: bool,
    pub err_is_terminal: bool,
    pub shutdown_timeout: Duration,
    pub poll_interval: Duration,
}

/// Output a command writes, shared, so a caller can watch it while the
/// command runs in another thread (`run_captured`).
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("captured output poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// What was written so far.
    pub fn text(&self) -> String {
        self.0.lock().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }
}

/// Runs `ferrite xl ARGS` in this process against `target`, not on a
/// terminal (for the tests and `ferrite bench xl`): its output goes to
/// `out`, `console` reads `input`. Returns (output, errors, success).
pub fn run_captured(target: &Target, args: &[&str], input: Option<Box<dyn Read + Send>>, out: Captured) -> (String, String, bool) {
    let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let parsed = match parse_args(&argv) {
        Ok(p) => p,
        Err(e) => return (String::new(), format!("{e:#}"), false),
    };
    let (mut o, mut e) = (out.clone(), Captured::default());
    let mut io = Io {
        out: &mut o,
        err: &mut e,
        input,
        input_is_terminal: false,
        err_is_terminal: false,
        shutdown_timeout: Duration::from_secs(60),
        poll_interval: Duration::from_millis(200),
    };
    let result = run(parsed.cmd, target, &mut io);
    let mut err = e.text();
    if let Err(why) = &result {
        err.push_str(&format!("{why:#}"));
    }
    (out.text(), err, result.is_ok())
}

/// `ferrite xl ARGS`.
pub fn main(args: &[String]) -> Result<ExitCode> {
    let parsed = parse_args(args)?;
    if parsed.cmd == XlCmd::Help {
        print!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    let env = |k: &str| std::env::var(k).ok();
    let target = target::resolve(&parsed.connect, &env, &session_file_path(), Path::new(target::SYSTEM_KEY_FILE), target::default_host())?;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut io = Io {
        input_is_terminal: std::io::stdin().is_terminal(),
        err_is_terminal: err.is_terminal(),
        out: &mut out,
        err: &mut err,
        input: Some(Box::new(std::io::stdin())),
        shutdown_timeout: Duration::from_secs(60),
        poll_interval: Duration::from_millis(200),
    };
    run(parsed.cmd, &target, &mut io)?;
    Ok(ExitCode::SUCCESS)
}

/// The domain `dom` names in `domains`.
fn find<'a>(domains: &'a [DomainInfo], dom: &DomRef) -> Result<&'a DomainInfo> {
    domains.iter().find(|d| dom.matches(d.id, &d.name)).ok_or_else(|| anyhow!("domain '{dom}' does not exist"))
}

fn list(client: &mut Client) -> Result<Vec<DomainInfo>> {
    match client.call(&Request::List)? {
        Response::Domains(d) => Ok(d),
        other => Err(client.unexpected(&other)),
    }
}

/// Runs one subcommand against `target`.
pub fn run(cmd: XlCmd, target: &Target, io: &mut Io<'_>) -> Result<()> {
    if cmd == XlCmd::Help {
        io.out.write_all(USAGE.as_bytes())?;
        return Ok(());
    }
    if let XlCmd::Create { console, config, overrides } = &cmd {
        // Checked before connecting: a bad file costs no round trip.
        let _ = writeln!(io.err, "Parsing config from {}", config.display());
        let prepared = create::prepare(config, overrides, io.err)?;
        let mut client = Client::connect(target)?;
        let id = create::upload(&mut client, &prepared, io.err, io.err_is_terminal)
            .with_context(|| format!("cannot create domain {}", prepared.domain))?;
        if *console {
            let input = io.input.take().ok_or_else(|| anyhow!("no console input"))?;
            console::attach(&mut client, DomRef::Id(id), input, io.input_is_terminal, io.out, io.err)?;
        }
        return Ok(());
    }
    let mut client = Client::connect(target)?;
    let out = &mut *io.out;
    match cmd {
        XlCmd::Help | XlCmd::Create { .. } => {}
        XlCmd::List { long, dom } => {
            let mut domains = list(&mut client)?;
            if let Some(d) = dom {
                domains = vec![find(&domains, &d)?.clone()];
            }
            out.write_all(if long { format::list_long(&domains) } else { format::list(&domains) }.as_bytes())?;
        }
        XlCmd::Info { field } => match client.call(&Request::Info)? {
            Response::Host(h) => out.write_all(format::info(&target.host, &h, field.as_deref()).as_bytes())?,
            other => return Err(client.unexpected(&other)),
        },
        XlCmd::Uptime { doms } => match client.call(&Request::Uptime)? {
            Response::Uptime(mut entries) => {
                if !doms.is_empty() {
                    for d in &doms {
                        if !entries.iter().any(|e| d.matches(e.id, &e.name)) {
                            bail!("domain '{d}' does not exist");
                        }
                    }
                    entries.retain(|e| doms.iter().any(|d| d.matches(e.id, &e.name)));
                }
                out.write_all(format::uptime(&entries).as_bytes())?;
            }
            other => return Err(client.unexpected(&other)),
        },
        XlCmd::Dmesg { clear } => match client.call(&Request::Dmesg { clear })? {
            Response::Log(text) => out.write_all(text.as_bytes())?,
            other => return Err(client.unexpected(&other)),
        },
        XlCmd::Destroy(d) => client.call_ok(&Request::Destroy(d))?,
        XlCmd::Reboot { force: false, dom } => client.call_ok(&Request::Reboot(dom))?,
        XlCmd::Reboot { force: true, dom } => client.call_ok(&Request::Trigger { dom, trigger: Trigger::Reset, vcpu: 0 })?,
        XlCmd::Trigger { dom, trigger, vcpu } => client.call_ok(&Request::Trigger { dom, trigger, vcpu })?,
        XlCmd::Pause(d) => client.call_ok(&Request::Pause(d))?,
        XlCmd::Unpause(d) => client.call_ok(&Request::Unpause(d))?,
        XlCmd::Shutdown { wait, all, dom } => shutdown(&mut client, wait, all, dom, io)?,
        XlCmd::VcpuList(doms) => {
            let host_cpus = match client.call(&Request::Info)? {
                Response::Host(h) => h.host_cpus,
                other => return Err(client.unexpected(&other)),
            };
            let mut vcpus = Vec::new();
            let queries: Vec<Option<DomRef>> =
                if doms.is_empty() { vec![None] } else { doms.into_iter().map(Some).collect() };
            for q in queries {
                match client.call(&Request::VcpuList(q))? {
                    Response::Vcpus(v) => vcpus.extend(v),
                    other => return Err(client.unexpected(&other)),
                }
            }
            out.write_all(format::vcpu_list(&vcpus, host_cpus).as_bytes())?;
        }
        XlCmd::VcpuPin { dom, vcpu, pcpus } => client.call_ok(&Request::VcpuPin { dom, vcpu, pcpus })?,
        XlCmd::NetworkList(doms) => {
            let mut rows = Vec::new();
            for d in doms {
                let name = d.to_string();
                match client.call(&Request::NetworkList(d))? {
                    Response::Vifs(v) => rows.extend(v.into_iter().map(|v| (name.clone(), v))),
                    other => return Err(client.unexpected(&other)),
                }
            }
            out.write_all(format::network_list(&rows).as_bytes())?;
        }
        XlCmd::Console(d) => {
            let input = io.input.take().ok_or_else(|| anyhow!("no console input"))?;
            console::attach(&mut client, d, input, io.input_is_terminal, io.out, io.err)?;
        }
    }
    io.out.flush()?;
    Ok(())
}

/// `xl shutdown [-w] [-a] [DOM]`: domains are named by id from here on,
/// so a new domain reusing a name is not mistaken for the old one.
fn shutdown(client: &mut Client, wait: bool, all: bool, dom: Option<DomRef>, io: &mut Io<'_>) -> Result<()> {
    let domains = list(client)?;
    let targets: Vec<DomainInfo> = match (&dom, all) {
        (Some(d), _) => vec![find(&domains, d)?.clone()],
        (None, _) => domains.into_iter().filter(|d| d.id != 0).collect(),
    };
    for d in &targets {
        let _ = writeln!(io.err, "Shutting down domain {}", d.id);
        client.call_ok(&Request::Shutdown { dom: DomRef::Id(d.id) })?;
    }
    if !wait || targets.is_empty() {
        return Ok(());
    }
    let _ = writeln!(io.err, "Waiting for {} domains", targets.len());
    let start = Instant::now();
    let mut waiting = targets;
    loop {
        let now = list(client)?;
        waiting.retain(|d| {
            let gone = !now.iter().any(|n| n.id == d.id);
            if gone {
                let _ = writeln!(io.err, "Domain {} has been shut down", d.id);
            }
            !gone
        });
        if waiting.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= io.shutdown_timeout {
            let names: Vec<&str> = waiting.iter().map(|d| d.name.as_str()).collect();
            let secs = io.shutdown_timeout.as_secs();
            return match names.as_slice() {
                [one] => Err(anyhow!("domain {one} did not shut down within {secs} s; it is still running")),
                many => Err(anyhow!(
                    "domains {} did not shut down within {secs} s; they are still running",
                    many.join(", ")
                )),
            };
        }
        std::thread::sleep(io.poll_interval);
    }
}
