//! CPU sets for `cpus=` (vCPU pinning).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::diag::Shown;

/// Highest number of physical CPUs a [`CpuSet`] can name (ids 0..MAX_CPUS).
pub const MAX_CPUS: usize = 4096;

/// A set of physical CPU ids below [`MAX_CPUS`].
#[derive(Clone, PartialEq, Eq)]
pub struct CpuSet {
    bits: [u64; MAX_CPUS / 64],
}

impl Default for CpuSet {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuSet {
    pub const fn new() -> Self {
        CpuSet {
            bits: [0; MAX_CPUS / 64],
        }
    }

    /// Every CPU id below [`MAX_CPUS`].
    pub fn all() -> Self {
        CpuSet {
            bits: [u64::MAX; MAX_CPUS / 64],
        }
    }

    /// Adds `cpu`; ids at or above [`MAX_CPUS`] are ignored (returns false).
    pub fn insert(&mut self, cpu: u32) -> bool {
        let c = cpu as usize;
        if c >= MAX_CPUS {
            return false;
        }
        self.bits[c / 64] |= 1 << (c % 64);
        true
    }

    pub fn remove(&mut self, cpu: u32) {
        let c = cpu as usize;
        if c < MAX_CPUS {
            self.bits[c / 64] &= !(1 << (c % 64));
        }
    }

    pub fn contains(&self, cpu: u32) -> bool {
        let c = cpu as usize;
        c < MAX_CPUS && self.bits[c / 64] & (1 << (c % 64)) != 0
    }

    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }

    pub fn union_with(&mut self, other: &CpuSet) {
        for (a, b) in self.bits.iter_mut().zip(other.bits.iter()) {
            *a |= *b;
        }
    }

    /// The ids in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..MAX_CPUS as u32).filter(move |&c| self.contains(c))
    }

    /// Parses xl's CPU list syntax: `all`, or comma-separated items `N`,
    /// `N-M` and `^N` / `^N-M` (exclusions, applied after the inclusions,
    /// as xl does). A string of only exclusions starts from `all`.
    pub fn parse(s: &str) -> Result<CpuSet, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err(String::from("empty CPU list"));
        }
        let mut set = CpuSet::new();
        let mut excl = CpuSet::new();
        let mut any_incl = false;
        for item in s.split(',') {
            let item = item.trim();
            if item.starts_with("node:") || item.starts_with("nodes:") {
                return Err(format!(
                    "NUMA node sets ({}) are not supported",
                    Shown(item)
                ));
            }
            let (neg, body) = match item.strip_prefix('^') {
                Some(b) => (true, b.trim()),
                None => (false, item),
            };
            if body == "all" {
                if neg {
                    return Err(String::from("'^all' excludes every CPU"));
                }
                set = CpuSet::all();
                any_incl = true;
                continue;
            }
            let (lo, hi) = match body.split_once('-') {
                Some((a, b)) => (cpu_id(a.trim(), item)?, cpu_id(b.trim(), item)?),
                None => {
                    let c = cpu_id(body, item)?;
                    (c, c)
                }
            };
            if lo > hi {
                return Err(format!("range {} goes backwards", Shown(item)));
            }
            let target = if neg { &mut excl } else { &mut set };
            for c in lo..=hi {
                target.insert(c);
            }
            any_incl |= !neg;
        }
        if !any_incl {
            set = CpuSet::all();
        }
        for (a, b) in set.bits.iter_mut().zip(excl.bits.iter()) {
            *a &= !*b;
        }
        if set.is_empty() {
            return Err(format!("CPU list {} selects no CPU", Shown(s)));
        }
        Ok(set)
    }
}

fn cpu_id(tok: &str, item: &str) -> Result<u32, String> {
    if tok.is_empty() || !tok.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("expected a CPU number or range in {}", Shown(item)));
    }
    match tok.parse::<u32>() {
        Ok(c) if (c as usize) < MAX_CPUS => Ok(c),
        _ => Err(format!(
            "CPU number {} is too large (limit {})",
            Shown(tok),
            MAX_CPUS - 1
        )),
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

/// Formats as the canonical range list, e.g. `0-3,5`.
impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut it = self.iter().peekable();
        while let Some(lo) = it.next() {
            let mut hi = lo;
            while it.peek() == Some(&(hi + 1)) {
                hi += 1;
                it.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// `cpus=` as xl reads it.
// One per domain; boxing the 512-byte set would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuAffinity {
    /// A string: every vCPU may run on any CPU of the set.
    All(CpuSet),
    /// A list: entry *i* is vCPU *i*'s set; vCPUs past the end are unpinned.
    PerVcpu(Vec<CpuSet>),
}

impl CpuAffinity {
    /// The CPUs any vCPU may use (the union for a per-vCPU list).
    pub fn union(&self) -> CpuSet {
        match self {
            CpuAffinity::All(s) => s.clone(),
            CpuAffinity::PerVcpu(v) => {
                let mut u = CpuSet::new();
                for s in v {
                    u.union_with(s);
                }
                u
            }
        }
    }

    /// The set for vCPU `vcpu`, `None` when it is unpinned.
    pub fn for_vcpu(&self, vcpu: usize) -> Option<&CpuSet> {
        match self {
            CpuAffinity::All(s) => Some(s),
            CpuAffinity::PerVcpu(v) => v.get(vcpu),
        }
    }
}
