//! CI's short fuzzing round: `ferrite fuzz`'s instrumented driver runs
//! every target for a fixed number of executions and must find nothing.
//! (The long runs are recorded in SECURITY.md; this catches a regression
//! the seeds and their first mutations reach, and keeps the coverage build
//! working.)

use std::process::Command;

/// Executions per target: about 10 s for all of them together.
const EXECS: &str = "30000";

#[test]
fn every_fuzz_target_survives_a_short_coverage_guided_round() {
    let driver = ferrite_tools::fuzz::build_driver().expect("the instrumented fuzz driver builds");
    let crash_dir = ferrite_tools::fuzz::fuzz_dir().join("ci-crashes");
    let out = Command::new(&driver)
        .args(["--execs", EXECS, "--progress", "0", "--crash-dir"])
        .arg(&crash_dir)
        .output()
        .expect("the fuzz driver runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "a fuzz target crashed (inputs in {}); see the summary above", crash_dir.display());
    assert!(stdout.contains("instrumented edges"), "the driver was built without coverage");
    // Every target ran and reached code (the summary's edges column).
    let rows: Vec<&str> = stdout.lines().skip_while(|l| !l.starts_with("target ")).skip(1).take_while(|l| !l.is_empty()).collect();
    assert_eq!(rows.len(), ferrite_fuzz_targets(), "summary rows: {rows:?}");
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1], EXECS, "{row}");
        assert!(cols[5].parse::<u32>().unwrap() > 0, "no edges reached: {row}");
        assert_eq!(cols[7], "0", "{row}");
    }
}

/// How many targets the driver lists.
fn ferrite_fuzz_targets() -> usize {
    let out = Command::new(ferrite_tools::fuzz::driver_path()).arg("--list").output().expect("--list runs");
    String::from_utf8_lossy(&out.stdout).lines().count()
}
