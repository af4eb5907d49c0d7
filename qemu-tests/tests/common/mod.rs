//! Helpers the hostile test binaries share: console lines with their boot
//! timestamps (`console_timestamps=boot`), to check a ticker's pace.

/// A console line's boot timestamp and text.
pub fn split_timestamp(line: &str) -> Option<(f64, &str)> {
    let rest = line.strip_prefix('[')?;
    let (time, text) = rest.split_once("] ")?;
    Some((time.trim().parse().ok()?, text))
}

/// Every line of `text` from domain `name`, with its timestamp.
pub fn domain_lines<'a>(text: &'a str, name: &str) -> Vec<(f64, &'a str)> {
    let prefix = format!("({name}) ");
    text.lines()
        .filter_map(split_timestamp)
        .filter_map(|(t, l)| l.strip_prefix(prefix.as_str()).map(|rest| (t, rest)))
        .collect()
}

/// The times of domain `name`'s `tick N` lines and the longest gap
/// between two of them, in seconds.
pub fn ticks(text: &str, name: &str) -> (Vec<f64>, f64) {
    let ticks: Vec<f64> = domain_lines(text, name).into_iter().filter(|(_, l)| l.starts_with("tick ")).map(|(t, _)| t).collect();
    let worst = ticks.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    (ticks, worst)
}
