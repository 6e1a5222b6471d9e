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
    append_line(&Line::Figure(figure));
}

/// Which way is better for a compared figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

/// The spread of one side's rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub rounds: usize,
}

impl Spread {
    /// The spread of `values` (the median of an even count is the upper middle, as
    /// [`percentile`] picks it); all zeros for no values.
    pub fn of(values: &[f64]) -> Spread {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Spread {
            min: sorted.first().copied().unwrap_or_default(),
            median: percentile(&sorted, 500),
            max: sorted.last().copied().unwrap_or_default(),
            rounds: sorted.len(),
        }
    }

    /// "median (min–max)" with `precision` decimals, as the benchmarks print it; "–" for no
    /// rounds (a peer that was not measured).
    pub fn brief(&self, precision: usize) -> String {
        if self.rounds == 0 {
            return "–".into();
        }
        format!("{:.p$} ({:.p$}–{:.p$})", self.median, self.min, self.max, p = precision)
    }
}

/// weft against what a user would run instead, measured on the same machine in the same run,
/// rounds alternating between the two sides so that a machine's drift hits both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Stable identifier, `part.what`.
    pub id: String,
    /// What is measured, the same way on both sides.
    pub label: String,
    pub unit: String,
    pub better: Better,
    pub weft: Spread,
    /// The peer by name ("Docker swarm overlay", "etcd 3.4, 3 members").
    pub peer: String,
    pub peer_spread: Spread,
    /// The advantage weft must reach: 1 (at least level) unless the design asks for more.
    #[serde(default = "level")]
    pub goal: f64,
}

fn level() -> f64 {
    1.0
}

impl Comparison {
    /// weft's rounds beside the peer's, to be at least level with it (see [`Comparison::goal`]).
    pub fn of_rounds(
        id: &str,
        label: &str,
        unit: &str,
        better: Better,
        weft: &[f64],
        peer: &str,
        peer_rounds: &[f64],
    ) -> Comparison {
        Comparison {
            id: id.into(),
            label: label.into(),
            unit: unit.into(),
            better,
            weft: Spread::of(weft),
            peer: peer.into(),
            peer_spread: Spread::of(peer_rounds),
            goal: 1.0,
        }
    }

    /// The advantage the design asks weft for, when more than being level.
    pub fn with_goal(self, goal: f64) -> Comparison {
        Comparison { goal, ..self }
    }

    /// How many times better weft's median is than the peer's: above 1 weft is ahead,
    /// whichever way the figure goes.
    pub fn advantage(&self) -> f64 {
        let (weft, peer) = (self.weft.median, self.peer_spread.median);
        let ratio = match self.better {
            Better::Higher => weft / peer,
            Better::Lower => peer / weft,
        };
        if ratio.is_finite() { ratio } else { 0.0 }
    }

    pub fn ahead(&self) -> bool {
        self.advantage() >= 1.0
    }

    pub fn verdict(&self) -> &'static str {
        match (self.advantage() >= self.goal, self.ahead()) {
            (true, _) => "met",
            (false, true) => "ahead, **goal missed**",
            (false, false) => "**behind**",
        }
    }
}

/// Reports a comparison to the runner (see [`record`]).
pub fn record_comparison(comparison: Comparison) {
    append_line(&Line::Comparison { comparison });
}

/// One line of a benchmark's results file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Comparison { comparison: Comparison },
    Figure(Figure),
}

fn append_line(line: &Line) {
    let Some(path) = std::env::var_os(RESULTS_ENV) else { return };
    let text = match serde_json::to_string(line) {
        Ok(text) => text,
        Err(e) => {
            let id = match line {
                Line::Comparison { comparison } => &comparison.id,
                Line::Figure(figure) => &figure.id,
            };
            return eprintln!("weft-bench: cannot encode {id}: {e}");
        }
    };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| writeln!(file, "{text}"));
    if let Err(e) = written {
        eprintln!("weft-bench: cannot append to {}: {e}", path.to_string_lossy());
    }
}

/// A benchmark's setting from the environment (`WEFT_BENCH_...`), or `default`.
pub fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Parses what a benchmark appended, one JSON object per line: its figures and comparisons.
pub fn parse_lines(text: &str) -> Result<(Vec<Figure>, Vec<Comparison>), String> {
    let (mut figures, mut comparisons) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        match serde_json::from_str(line).map_err(|e| format!("figure line {}: {e}", n + 1))? {
            Line::Figure(f) => figures.push(f),
            Line::Comparison { comparison } => comparisons.push(comparison),
        }
    }
    Ok((figures, comparisons))
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
    /// weft beside its peers (runs from before peers were measured have none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comparisons: Vec<Comparison>,
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
    // Control operations have no absolute targets: their rates and latencies move with the
    // machine's fsync and cores by 3×, so they are held to etcd's and Docker's in the same run.
    Target { id: "agent.programming.rate", bound: Bound::AtLeast(20_000.0) },
    Target { id: "agent.convergence.p99", bound: Bound::AtMost(100.0) },
    // Queries/s is held to twice Docker's embedded DNS in the same run (the comparison
    // `dns.qps_vs_docker`), not to a figure that moves with the machine.
    Target { id: "dns.p99", bound: Bound::AtMost(0.5) },
    Target { id: "dataplane.vxlan_ratio", bound: Bound::AtLeast(90.0) },
    Target { id: "dataplane.encrypted_ratio", bound: Bound::AtLeast(90.0) },
    // The design asks for 1,000,000 endpoints and 5,000 watching hosts on one 3-member
    // cluster, with memory, snapshot, sync, fan-out and restart reported; these two say "it
    // worked at that size".
    Target { id: "scale.endpoints", bound: Bound::AtLeast(1_000_000.0) },
    Target { id: "scale.watchers", bound: Bound::AtLeast(5_000.0) },
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
    &["control", "cli", "scale", "agent", "dns", "dnsserver", "dataplane", "published", "docker", "cni"];

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

/// One row per comparison: weft's and the peer's median with their spread, and weft's
/// advantage. Empty when no run has comparisons.
pub fn comparisons_table(results: &Results) -> String {
    let mut runs: Vec<&Run> = results.runs.values().filter(|r| !r.comparisons.is_empty()).collect();
    if runs.is_empty() {
        return String::new();
    }
    runs.sort_by_key(|r| (part_rank(&r.part), r.part.clone()));
    let spread = |s: &Spread, unit: &str| {
        format!(
            "{} {unit} ({}–{}, {} rounds)",
            format_value(s.median),
            format_value(s.min),
            format_value(s.max),
            s.rounds
        )
    };
    let mut out = String::from(
        "| part | figure | weft, median (min–max) | peer | peer, median (min–max) | weft's advantage | goal | |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for run in runs {
        for c in &run.comparisons {
            let direction = match c.better {
                Better::Higher => "higher is better",
                Better::Lower => "lower is better",
            };
            let _ = writeln!(
                out,
                "| {} | {} ({direction}) | {} | {} | {} | {:.2} × | ≥ {} × | {} |",
                run.part,
                c.label,
                spread(&c.weft, &c.unit),
                c.peer,
                spread(&c.peer_spread, &c.unit),
                c.advantage(),
                format_value(c.goal),
                c.verdict()
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
    let compared = comparisons_table(results);
    let side_by_side = if compared.is_empty() {
        String::new()
    } else {
        format!(
            "## weft beside its peers\n\n\
             Each row measured on both sides in the same run, rounds alternating; the advantage \
             is weft's median over the peer's (the peer's over weft's where lower is better), \
             so above 1 × weft is ahead.\n\n{compared}\n"
        )
    };
    format!(
        "{BEGIN}\n{side_by_side}## Latest figures against the targets\n\n\
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
            comparisons: vec![],
        }
    }

    #[test]
    fn figures_round_trip_through_the_results_file_format() {
        let figures = vec![
            Figure::new("dns.qps", "queries/s", 81_247.0, "q/s"),
            Figure::new("dns.p99", "p99", 0.455, "ms"),
        ];
        let text: String = figures.iter().map(|f| serde_json::to_string(f).unwrap() + "\n").collect();
        assert_eq!(parse_lines(&text).unwrap(), (figures, vec![]));
        let broken = parse_lines("{\"id\": 1}\n").unwrap_err();
        assert!(broken.contains("figure line 1"), "{broken}");
    }

    #[test]
    fn verdicts_follow_each_targets_direction() {
        assert!(meets(1_000_000.0, target("scale.endpoints").unwrap()));
        assert!(!meets(999_999.0, target("scale.endpoints").unwrap()));
        assert_eq!(target("control.creates_256.rate"), None, "held to etcd's figure in the same run");
        assert!(meets(0.5, target("dns.p99").unwrap()));
        assert_eq!(target("dns.qps"), None, "held to Docker's figure in the same run");
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
        assert_eq!(lines[3], "| dns | queries/s | 81,247 q/s |  |  |");
        assert_eq!(lines[4], "| dns | p99 | 0.455 ms | ≤ 0.500 ms | met |");
    }

    fn compared(better: Better, weft: &[f64], peer: &[f64]) -> Comparison {
        let label = "container → container";
        Comparison::of_rounds(
            "dataplane.overlay",
            label,
            "Gbit/s",
            better,
            weft,
            "Docker swarm overlay",
            peer,
        )
    }

    #[test]
    fn comparisons_say_who_is_ahead_whichever_way_is_better() {
        let faster = compared(Better::Higher, &[9.0, 10.0, 12.0], &[8.0, 9.5, 5.0]);
        assert_eq!(faster.weft, Spread { min: 9.0, median: 10.0, max: 12.0, rounds: 3 });
        assert_eq!(faster.weft.brief(1), "10.0 (9.0–12.0)");
        assert_eq!(Spread::of(&[]).brief(1), "–");
        assert!((faster.advantage() - 10.0 / 8.0).abs() < 1e-9 && faster.ahead());
        let slower_latency = compared(Better::Lower, &[4.0, 3.0, 5.0], &[2.0, 2.0, 2.0]);
        assert!((slower_latency.advantage() - 0.5).abs() < 1e-9 && !slower_latency.ahead());
        assert_eq!(compared(Better::Higher, &[1.0], &[]).advantage(), 0.0, "no peer, no claim");
        let twice = faster.clone().with_goal(2.0);
        assert_eq!((faster.verdict(), twice.verdict()), ("met", "ahead, **goal missed**"));

        let line = serde_json::to_string(&Line::Comparison { comparison: faster.clone() }).unwrap();
        let figure = serde_json::to_string(&Figure::new("dns.qps", "q", 1.0, "q/s")).unwrap();
        let (figures, comparisons) = parse_lines(&format!("{line}\n{figure}\n")).unwrap();
        assert_eq!((figures.len(), comparisons), (1, vec![faster.clone()]));

        let mut results = Results::default();
        let mut with_peer = run("dataplane", vec![]);
        with_peer.comparisons = vec![faster, slower_latency];
        results.merge(with_peer);
        let table = comparisons_table(&results);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[2],
            "| dataplane | container → container (higher is better) | 10.0 Gbit/s (9.00–12.0, 3 rounds) \
             | Docker swarm overlay | 8.00 Gbit/s (5.00–9.50, 3 rounds) | 1.25 × | ≥ 1.00 × | met |"
        );
        assert!(lines[3].ends_with("| 0.50 × | ≥ 1.00 × | **behind** |"), "{}", lines[3]);
        assert!(render_section(&results).contains("## weft beside its peers"));
        assert!(comparisons_table(&Results::default()).is_empty());
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
