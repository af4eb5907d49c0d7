//! Which host disks the running domains use, so that a disk one domain
//! writes is never used by another (as Xen's hotplug scripts refuse it):
//! two guests must never see each other's data change under them. PVH
//! and HVM domains claim their disks when they are built and release
//! them when they stop.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use ferrite_config::disk::{disk_sharing_conflict, DiskClaim};
use spin::Mutex;

/// The claims, and beside each the name of the domain that holds it (for
/// the refusal message).
static CLAIMS: Mutex<(Vec<DiskClaim>, Vec<String>)> = Mutex::new((Vec::new(), Vec::new()));

/// Refuses disks another running domain writes, or that domain `name`
/// would write while another uses them (`wanted`: each disk's target and
/// whether it is written; `disk_sharing_conflict` decides). With `owner`
/// (the domain's id), the disks are then claimed for it, under the same
/// lock as the check.
pub fn check(name: &str, wanted: &[(String, bool)], owner: Option<u32>) -> Result<(), String> {
    let mut guard = CLAIMS.lock();
    let (claims, names) = &mut *guard;
    for (target, writable) in wanted {
        if let Some(i) = disk_sharing_conflict(claims, target, *writable).and_then(|c| claims.iter().position(|x| core::ptr::eq(x, c))) {
            let c = &claims[i];
            return Err(format!(
                "{}: disk '{}' is {} by domain {} ({}); a disk written by one domain cannot be used by another \
                 (give both 'r' access, or stop that domain first)",
                name,
                target,
                if c.writable { "written" } else { "used read-only" },
                c.domain,
                names[i]
            ));
        }
    }
    if let Some(domain) = owner {
        for (target, writable) in wanted {
            claims.push(DiskClaim { target: target.clone(), domain, writable: *writable });
            names.push(String::from(name));
        }
    }
    Ok(())
}

/// Domain `id` stopped: its disks are free for others.
pub fn release(id: u32) {
    let mut guard = CLAIMS.lock();
    let (claims, names) = &mut *guard;
    let mut i = 0;
    while i < claims.len() {
        if claims[i].domain == id {
            claims.swap_remove(i);
            names.swap_remove(i);
        } else {
            i += 1;
        }
    }
}
