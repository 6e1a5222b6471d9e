//! weft's benchmark figures: how a benchmark reports one, the design's targets they are held
//! to, and the generated part of `BENCHMARKS.md`.
//!
//! Benchmarks (`cargo bench` targets in the controller and node crates) call [`record`] for
//! every figure; when they run under the runner (`weft-bench`, started by `bench/run.sh`) the
//! figures land in a file the runner reads, and the runner keeps the latest run of each part in
//! `bench/results.json` and the table in `BENCHMARKS.md` between [`BEGIN`] and [`END`].
//! Everything here but [`record`] is pure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;

use serde::{Deserialize, Serialize};

/// The environment variable naming the file a benchmark appends its figures to.
pub const RESULTS_ENV: &str = "WEFT_BENCH_RESULTS";

/// Markers around the generated section of BENCHMARKS.md.
pub const BEGIN: &str = "<!-- weft-bench: begin generated section (bash bench/run.sh rewrites it) -->";
pub const END: &str = "<!-- weft-bench: end generated section -->";

/// One measured figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Stable identifier, `part.what` (targets are keyed by it).
    pub id: String,
    /// What a reader sees.
    pub label: String,
    pub value: f64,
    pub unit: String,
}

impl Figure {
    pub fn new(id: &str, label: &str, value: f64, unit: &str) -> Figure {
        Figure { id: id.into(), label: label.into(), value, unit: unit.into() }
    }
}

/// Reports a figure to the runner, when the benchmark runs under it (the benchmark prints its
/// own table either way). A failure to write is reported, not fatal: the printed table stays.
pub fn record(figure: Figure) {
    let Some(path) = std::env::var_os(RESULTS_ENV) else { return };
    let line = match serde_json::to_string(&figure) {
        Ok(line) => line,
        Err(e) => return eprintln!("weft-bench: cannot encode figure {}: {e}", figure.id),
    };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| writeln!(file, "{line}"));
    if let Err(e) = written {
        eprintln!("weft-bench: cannot append to {}: {e}", path.to_string_lossy());
    }
}

/// A benchmark's setting from the environment (`WEFT_BENCH_...`), or `default`.
pub fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Parses the figures a benchmark appended, one JSON object per line.
pub fn parse_figures(text: &str) -> Result<Vec<Figure>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, line)| serde_json::from_str(line).map_err(|e| format!("figure line {}: {e}", n + 1)))
        .collect()
}

/// One run of one part of the benchmarks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub part: String,
    /// The exact command that produced these figures on its own.
    pub command: String,
    /// `YYYY-MM-DD`, UTC.
    pub date: String,
    /// Short commit id, `-dirty` when the working tree had changes.
    pub commit: String,
    pub machine: String,
    pub figures: Vec<Figure>,
}

/// The latest run of every part, as kept in `bench/results.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub runs: BTreeMap<String, Run>,
}

impl Results {
    /// Replaces the part's previous run; other parts keep theirs.
    pub fn merge(&mut self, run: Run) {
        self.runs.insert(run.part.clone(), run);
    }
}

/// Which side of the target a figure must be on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

/// A target from the design ("Performance" in DESIGN.md).
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub id: &'static str,
    pub bound: Bound,
}

/// The design's targets for a 2-core machine, by figure id.
pub const TARGETS: &[Target] = &[
    Target { id: "control.creates_256.rate", bound: Bound::AtLeast(20_000.0) },
    Target { id: "control.creates_256.p99", bound: Bound::AtMost(20.0) },
    Target { id: "control.network_create.p50", bound: Bound::AtMost(5.0) },
    Target { id: "agent.programming.rate", bound: Bound::AtLeast(20_000.0) },
    Target { id: "agent.convergence.p99", bound: Bound::AtMost(100.0) },
    // Twice Docker's embedded DNS measured the same way here (about 55,000 queries/s).
    Target { id: "dns.qps", bound: Bound::AtLeast(110_000.0) },
    Target { id: "dns.p99", bound: Bound::AtMost(0.5) },
    Target { id: "dataplane.vxlan_ratio", bound: Bound::AtLeast(90.0) },
    Target { id: "dataplane.encrypted_ratio", bound: Bound::AtLeast(90.0) },
    // The design asks for 100,000 endpoints and 1,000 watchers to work and for memory and
    // restart time to be reported; these two say "it worked at that size".
    Target { id: "scale.endpoints", bound: Bound::AtLeast(100_000.0) },
    Target { id: "scale.watchers", bound: Bound::AtLeast(1_000.0) },
    // Not a performance target: a watcher must never be taken back in time.
    Target { id: "scale.backwards", bound: Bound::AtMost(0.0) },
    // Published ports (issue 19): at least 95 % of reaching the container directly, and ahead
    // of Docker's `-p` for clients on the host (docker-proxy's path).
    Target { id: "published.ratio.rt", bound: Bound::AtLeast(95.0) },
    Target { id: "published.ratio.conn", bound: Bound::AtLeast(95.0) },
    Target { id: "published.vs_docker.rt", bound: Bound::AtLeast(1.0) },
    Target { id: "published.vs_docker.conn", bound: Bound::AtLeast(1.0) },
    // The Docker plugin (issue 20): no slower a `docker run` than Docker swarm's overlay in the
    // same run, and the new container answering by name from another host the moment `run`
    // returns.
    Target { id: "docker.run_vs_swarm", bound: Bound::AtMost(1.0) },
    Target { id: "docker.first_run_vs_swarm", bound: Bound::AtMost(1.0) },
    Target { id: "docker.weft.first_try_pct", bound: Bound::AtLeast(100.0) },
    // The CNI plugin (issue 21): `podman run` on a weft network no slower than on podman's own
    // CNI network in the same run (which reaches one host only).
    Target { id: "cni.run_vs_podman", bound: Bound::AtMost(1.0) },
];

pub fn target(id: &str) -> Option<Bound> {
    TARGETS.iter().find(|t| t.id == id).map(|t| t.bound)
}

/// Whether `value` meets `bound`.
pub fn meets(value: f64, bound: Bound) -> bool {
    match bound {
        Bound::AtLeast(min) => value >= min,
        Bound::AtMost(max) => value <= max,
    }
}

/// A value with the precision its size deserves: 81,247 / 12.4 / 0.455.
pub fn format_value(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 {
        #[allow(clippy::cast_possible_truncation)] // rounded first; figures are far below 2^63
        let whole = value.round() as i64;
        thousands(whole)
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn describe(bound: Bound, unit: &str) -> String {
    match bound {
        Bound::AtLeast(v) => format!("≥ {} {unit}", format_value(v)),
        Bound::AtMost(v) => format!("≤ {} {unit}", format_value(v)),
    }
}

/// The order parts appear in, the order the runner runs them.
pub const PARTS: &[&str] =
    &["control", "scale", "agent", "dns", "dnsserver", "dataplane", "published", "docker", "cni"];

fn part_rank(part: &str) -> usize {
    PARTS.iter().position(|p| *p == part).unwrap_or(PARTS.len())
}

/// One row per figure: value, target and verdict. Used for the terminal and the document.
pub fn figures_table(results: &Results) -> String {
    let mut runs: Vec<&Run> = results.runs.values().collect();
    runs.sort_by_key(|r| (part_rank(&r.part), r.part.clone()));
    let mut out = String::from("| part | figure | value | target | |\n|---|---|---|---|---|\n");
    for run in runs {
        for f in &run.figures {
            let (target, verdict) = match target(&f.id) {
                Some(bound) => {
                    let verdict = if meets(f.value, bound) { "met" } else { "**missed**" };
                    (describe(bound, &f.unit), verdict)
                }
                None => (String::new(), ""),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} {} | {target} | {verdict} |",
                run.part,
                f.label,
                format_value(f.value),
                f.unit
            );
        }
    }
    out
}

/// Where and how each part was last run.
pub fn runs_table(results: &Results) -> String {
    let mut runs: Vec<&Run> = results.runs.values().collect();
    runs.sort_by_key(|r| (part_rank(&r.part), r.part.clone()));
    let mut out = String::from("| part | date | commit | machine | command |\n|---|---|---|---|---|\n");
    for r in runs {
        let _ = writeln!(out, "| {} | {} | {} | {} | `{}` |", r.part, r.date, r.commit, r.machine, r.command);
    }
    out
}

/// The generated section of BENCHMARKS.md, markers included.
pub fn render_section(results: &Results) -> String {
    format!(
        "{BEGIN}\n## Latest figures against the targets\n\n\
         Every figure from the latest run of each part: `bash bench/run.sh` runs all parts, \
         `bash bench/run.sh PART...` some of them; each part's own command is in the second \
         table. Targets are the design's (DESIGN.md, \"Performance\"); the dated sections below \
         explain the figures, what was tried and what limits them.\n\n{}\n{}{END}\n",
        figures_table(results),
        runs_table(results)
    )
}

/// `document` with its generated section replaced by `section`; without one, the section goes
/// before the first second-level heading after the introduction (or at the end).
pub fn replace_section(document: &str, section: &str) -> String {
    if let (Some(begin), Some(end)) = (document.find(BEGIN), document.find(END))
        && begin < end
    {
        let mut after = end + END.len();
        if document[after..].starts_with('\n') {
            after += 1;
        }
        return format!("{}{section}{}", &document[..begin], &document[after..]);
    }
    match document.find("\n## ") {
        Some(at) => format!("{}{section}\n{}", &document[..=at], &document[at + 1..]),
        None => format!("{document}\n{section}"),
    }
}

/// `YYYY-MM-DD` for seconds since the Unix epoch (UTC).
pub fn date_of(unix_seconds: u64) -> String {
    let days = i64::try_from(unix_seconds / 86_400).unwrap_or(i64::MAX / 2);
    let (year, month, day) = weft_core::calendar::civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The nearest-rank percentile of sorted samples, in thousandths (500 = p50, 990 = p99).
pub fn percentile<T: Copy + Default>(sorted: &[T], per_mille: usize) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    sorted[(((sorted.len() - 1) * per_mille + 500) / 1000).min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(part: &str, figures: Vec<Figure>) -> Run {
        Run {
            part: part.into(),
            command: format!("cargo bench {part}"),
            date: "2026-12-01".into(),
            commit: "abc1234".into(),
            machine: "test machine".into(),
            figures,
        }
    }

    #[test]
    fn figures_round_trip_through_the_results_file_format() {
        let figures = vec![
            Figure::new("dns.qps", "queries/s", 81_247.0, "q/s"),
            Figure::new("dns.p99", "p99", 0.455, "ms"),
        ];
        let text: String = figures.iter().map(|f| serde_json::to_string(f).unwrap() + "\n").collect();
        assert_eq!(parse_figures(&text).unwrap(), figures);
        let broken = parse_figures("{\"id\": 1}\n").unwrap_err();
        assert!(broken.contains("figure line 1"), "{broken}");
    }

    #[test]
    fn verdicts_follow_each_targets_direction() {
        assert!(meets(20_000.0, target("control.creates_256.rate").unwrap()));
        assert!(!meets(19_999.0, target("control.creates_256.rate").unwrap()));
        assert!(meets(0.5, target("dns.p99").unwrap()));
        assert!(!meets(0.51, target("dns.p99").unwrap()));
        assert_eq!(target("control.creates_1.rate"), None);
        for t in TARGETS {
            assert!(PARTS.contains(&t.id.split('.').next().unwrap()), "{} names no part", t.id);
        }
    }

    #[test]
    fn the_table_shows_value_target_and_verdict() {
        let mut results = Results::default();
        results.merge(run(
            "dns",
            vec![
                Figure::new("dns.qps", "queries/s", 81_247.4, "q/s"),
                Figure::new("dns.p99", "p99", 0.455, "ms"),
            ],
        ));
        results.merge(run(
            "control",
            vec![Figure::new("control.creates_1.rate", "creates/s, 1 client", 581.0, "/s")],
        ));
        let table = figures_table(&results);
        let lines: Vec<&str> = table.lines().collect();
        // control comes before dns whatever the map order.
        assert_eq!(lines[2], "| control | creates/s, 1 client | 581 /s |  |  |");
        assert_eq!(lines[3], "| dns | queries/s | 81,247 q/s | ≥ 110,000 q/s | **missed** |");
        assert_eq!(lines[4], "| dns | p99 | 0.455 ms | ≤ 0.500 ms | met |");
    }

    #[test]
    fn a_new_run_replaces_only_its_own_part() {
        let mut results = Results::default();
        results.merge(run("dns", vec![Figure::new("dns.qps", "q", 1.0, "q/s")]));
        results.merge(run("agent", vec![Figure::new("agent.programming.rate", "r", 2.0, "/s")]));
        results.merge(run("dns", vec![Figure::new("dns.qps", "q", 3.0, "q/s")]));
        assert_eq!(results.runs.len(), 2);
        assert_eq!(results.runs["dns"].figures[0].value, 3.0);
        assert_eq!(results.runs["agent"].figures[0].value, 2.0);
    }

    #[test]
    fn the_section_is_inserted_once_then_replaced_in_place() {
        let doc = "# weft benchmarks\n\nIntro.\n\n## Machine\n\nold\n";
        let first = replace_section(doc, &format!("{BEGIN}\none\n{END}\n"));
        assert_eq!(
            first,
            format!("# weft benchmarks\n\nIntro.\n\n{BEGIN}\none\n{END}\n\n## Machine\n\nold\n")
        );
        let second = replace_section(&first, &format!("{BEGIN}\ntwo\n{END}\n"));
        assert_eq!(second, first.replace("one", "two"));
        assert_eq!(second.matches(BEGIN).count(), 1);
        let bare = replace_section("no headings", &format!("{BEGIN}\nx\n{END}\n"));
        assert!(bare.starts_with("no headings\n") && bare.ends_with(&format!("{END}\n")));
    }

    #[test]
    fn values_are_printed_with_sensible_precision() {
        assert_eq!(format_value(1_234_567.8), "1,234,568");
        assert_eq!(format_value(8_859.0), "8,859");
        assert_eq!(format_value(-2_000.0), "-2,000");
        assert_eq!(format_value(581.4), "581");
        assert_eq!(format_value(19.93), "19.9");
        assert_eq!(format_value(2.345), "2.35");
        assert_eq!(format_value(0.4551), "0.455");
    }

    #[test]
    fn dates_come_from_the_civil_calendar() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(951_782_400), "2000-02-29");
        assert_eq!(date_of(1_796_083_200), "2026-12-01");
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&samples, 500), 51);
        assert_eq!(percentile(&samples, 990), 99);
        assert_eq!(percentile(&samples, 1000), 100);
        assert_eq!(percentile::<u32>(&[], 500), 0);
    }
}
