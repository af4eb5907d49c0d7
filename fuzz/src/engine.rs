//! The fuzz loop: run the seeds, then mutate corpus entries; keep an input
//! when it reaches an edge (or an edge's hit-count bucket) no earlier input
//! reached; catch each input's panic; save crashing inputs; report
//! progress and a summary.

use crate::coverage;
use crate::mutate::mutate;
use crate::rng::Rng;
use crate::targets::Target;
use std::cell::RefCell;
use std::collections::HashSet;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// When to stop and how to report.
#[derive(Clone, Debug)]
pub struct Options {
    /// Stop after this many executions (seeds included).
    pub execs: Option<u64>,
    /// Stop after this much time.
    pub time: Option<Duration>,
    /// Seed of the mutation RNG (runs with one seed repeat exactly when
    /// coverage is the same).
    pub seed: u64,
    /// Where crashing inputs are saved (`<dir>/<target>/crash-<hash>`).
    pub crash_dir: Option<PathBuf>,
    /// Progress line interval; `None` for none.
    pub progress: Option<Duration>,
    /// One input taking longer than this is a hang: it is saved and the
    /// process exits.
    pub hang_timeout: Duration,
    /// The command that reproduces a saved input, printed with it, e.g.
    /// `ferrite fuzz`; `<target> --reproduce <file>` is appended.
    pub reproduce_command: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            execs: Some(100_000),
            time: None,
            seed: 1,
            crash_dir: None,
            progress: None,
            hang_timeout: Duration::from_secs(10),
            reproduce_command: "ferrite fuzz".into(),
        }
    }
}

/// What one target's run came to.
#[derive(Clone, Debug)]
pub struct Report {
    pub target: &'static str,
    pub execs: u64,
    pub elapsed: Duration,
    pub corpus: usize,
    /// Edges reached (0 when the build has no coverage instrumentation).
    pub edges: usize,
    /// Edge and hit-count bucket pairs reached.
    pub features: usize,
    pub crashes: u64,
    /// One line per distinct crash (by panic location): message and file.
    pub crash_notes: Vec<String>,
}

impl Report {
    pub fn execs_per_second(&self) -> f64 {
        self.execs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

thread_local! {
    /// Set while an input runs: the panic hook stores the message here
    /// instead of printing it.
    static CAPTURE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that captures the message of panics inside
/// [`run_one`] and leaves every other panic to the previous hook.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let captured = CAPTURE.with(|c| {
                let mut c = c.borrow_mut();
                match c.as_mut() {
                    Some(slot) => {
                        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
                        let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
                            (*s).to_string()
                        } else if let Some(s) = info.payload().downcast_ref::<String>() {
                            s.clone()
                        } else {
                            "(non-string panic)".into()
                        };
                        *slot = format!("{location}: {msg}");
                        true
                    }
                    None => false,
                }
            });
            if !captured {
                previous(info);
            }
        }));
    });
}

/// Runs one input; `Err(message)` if it panicked (a failed property).
pub fn run_one(target: &Target, input: &[u8]) -> Result<(), String> {
    install_panic_hook();
    CAPTURE.with(|c| *c.borrow_mut() = Some(String::new()));
    let result = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    let msg = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    result.map_err(|_| msg)
}

/// Which (edge, hit-count bucket) pairs have been seen, and how many.
struct Features {
    seen: Vec<u8>,
    edges: usize,
    features: usize,
}

impl Features {
    fn new() -> Features {
        Features { seen: vec![0; coverage::MAX_EDGES], edges: 0, features: 0 }
    }

    /// AFL's buckets: 1, 2, 3, 4-7, 8-15, 16-31, 32-127, 128+ hits.
    fn bucket(hits: u8) -> u8 {
        let b = match hits {
            0 | 1 => 0,
            2 => 1,
            3 => 2,
            4..=7 => 3,
            8..=15 => 4,
            16..=31 => 5,
            32..=127 => 6,
            _ => 7,
        };
        1 << b
    }

    /// Folds the last run's counters in; true if anything was new.
    fn absorb(&mut self) -> bool {
        let mut new = false;
        let (seen, edges, features) = (&mut self.seen, &mut self.edges, &mut self.features);
        coverage::for_each_hit(|edge, hits| {
            let bit = Features::bucket(hits);
            let s = &mut seen[edge];
            if *s & bit == 0 {
                if *s == 0 {
                    *edges += 1;
                }
                *s |= bit;
                *features += 1;
                new = true;
            }
        });
        new
    }
}

/// What the hang watchdog needs: progress and the running input.
struct Watch {
    execs: AtomicU64,
    input: Mutex<Vec<u8>>,
    done: AtomicBool,
}

/// Fuzzes `target` until `opts` says stop; progress and crash notes go to
/// `out`.
pub fn fuzz(target: &'static Target, opts: &Options, out: &mut dyn Write) -> Report {
    let start = Instant::now();
    let mut rng = Rng::new(opts.seed ^ fnv1a(target.name.as_bytes()));
    let mut features = Features::new();
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let mut crash_locations: HashSet<String> = HashSet::new();
    let mut report = Report {
        target: target.name,
        execs: 0,
        elapsed: Duration::ZERO,
        corpus: 0,
        edges: 0,
        features: 0,
        crashes: 0,
        crash_notes: Vec::new(),
    };
    let watch = Arc::new(Watch { execs: AtomicU64::new(0), input: Mutex::new(Vec::new()), done: AtomicBool::new(false) });
    let watchdog = spawn_watchdog(target, opts, watch.clone());
    let mut next_progress = opts.progress.map(|p| start + p);
    let seeds = (target.seeds)();
    let mut seed_iter = seeds.into_iter();
    let mut input: Vec<u8> = Vec::with_capacity(target.max_len);

    loop {
        if opts.execs.is_some_and(|n| report.execs >= n) || opts.time.is_some_and(|t| start.elapsed() >= t) {
            break;
        }
        let from_seed = match seed_iter.next() {
            Some(s) => {
                input = s;
                input.truncate(target.max_len);
                true
            }
            None => {
                if corpus.is_empty() {
                    corpus.push(Vec::new());
                }
                // Favour recent finds a little: they are on the frontier.
                let pick = if rng.one_in(4) { corpus.len() - 1 - rng.below(corpus.len().min(16)) } else { rng.below(corpus.len()) };
                input.clear();
                input.extend_from_slice(&corpus[pick]);
                let other = &corpus[rng.below(corpus.len())];
                mutate(&mut input, &mut rng, target.max_len, target.dictionary, other);
                false
            }
        };
        watch.input.lock().unwrap_or_else(|e| e.into_inner()).clone_from(&input);
        coverage::reset();
        let result = run_one(target, &input);
        report.execs += 1;
        watch.execs.store(report.execs, Ordering::Relaxed);
        let new = features.absorb();
        match result {
            Ok(()) => {
                if new || from_seed {
                    corpus.push(input.clone());
                }
            }
            Err(msg) => {
                report.crashes += 1;
                let location = msg.split(": ").next().unwrap_or("").to_string();
                if crash_locations.insert(location) {
                    let saved = save_input(opts.crash_dir.as_deref(), target.name, "crash", &input);
                    let mut note = format!("{}: {msg}", target.name);
                    match &saved {
                        Some(path) => note += &format!(
                            "\n    input: {}\n    reproduce: {} {} --reproduce {}",
                            path.display(),
                            opts.reproduce_command,
                            target.name,
                            path.display()
                        ),
                        None => note += &format!("\n    input ({} bytes): {:02x?}", input.len(), &input[..input.len().min(64)]),
                    }
                    let _ = writeln!(out, "CRASH {note}");
                    report.crash_notes.push(note);
                }
            }
        }
        if let Some(at) = next_progress {
            if Instant::now() >= at {
                let el = start.elapsed().as_secs_f64();
                let _ = writeln!(
                    out,
                    "[{}] {:>11} execs {:>9.0}/s  corpus {:>5}  edges {:>6}/{}  features {:>6}  crashes {}",
                    target.name,
                    report.execs,
                    report.execs as f64 / el,
                    corpus.len(),
                    features.edges,
                    coverage::edges_known(),
                    features.features,
                    report.crashes
                );
                next_progress = opts.progress.map(|p| Instant::now() + p);
            }
        }
    }
    watch.done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    report.elapsed = start.elapsed();
    report.corpus = corpus.len();
    report.edges = features.edges;
    report.features = features.features;
    report
}

/// Saves the input and exits if one execution takes longer than the hang
/// timeout (a loop in a parser is a finding too).
fn spawn_watchdog(target: &'static Target, opts: &Options, watch: Arc<Watch>) -> std::thread::JoinHandle<()> {
    let (timeout, dir, command) = (opts.hang_timeout, opts.crash_dir.clone(), opts.reproduce_command.clone());
    std::thread::spawn(move || {
        let (mut last, mut since) = (u64::MAX, Instant::now());
        while !watch.done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            let now = watch.execs.load(Ordering::Relaxed);
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() > timeout {
                let input = watch.input.lock().unwrap_or_else(|e| e.into_inner()).clone();
                eprintln!("HANG {}: one input ran longer than {:?}", target.name, timeout);
                match save_input(dir.as_deref(), target.name, "hang", &input) {
                    Some(p) => eprintln!("    input: {}\n    reproduce: {command} {} --reproduce {}", p.display(), target.name, p.display()),
                    None => eprintln!("    input ({} bytes): {:02x?}", input.len(), &input[..input.len().min(64)]),
                }
                std::process::exit(3);
            }
        }
    })
}

/// Writes `<dir>/<target>/<kind>-<hash>`; `None` without a directory or on
/// a write error (reported).
fn save_input(dir: Option<&Path>, target: &str, kind: &str, input: &[u8]) -> Option<PathBuf> {
    let dir = dir?.join(target);
    let path = dir.join(format!("{kind}-{:016x}", fnv1a(input)));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input)) {
        Ok(()) => Some(path),
        Err(e) => {
            eprintln!("cannot save {}: {e}", path.display());
            None
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}
