//! `weft-bench [PART...]`: runs weft's benchmarks (all parts, or the ones named), prints every
//! figure beside its target, and keeps `bench/results.json` and the generated section of
//! `BENCHMARKS.md` current. `bash bench/run.sh` installs what the benchmarks need first.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{SystemTime, UNIX_EPOCH};

use weft_bench::{PARTS, RESULTS_ENV, Results, Run};

/// The standalone command of each part: what the runner runs, and what BENCHMARKS.md shows.
fn command_of(part: &str) -> Option<Vec<&'static str>> {
    let args: &[&str] = match part {
        "control" => &["bench", "-p", "weft-controller", "--bench", "cluster"],
        "scale" => &["bench", "-p", "weft-controller", "--bench", "scale"],
        "agent" => &[
            "bench",
            "-p",
            "weft-node",
            "--bench",
            "dataplane",
            "--",
            "programming",
            "convergence",
            "attaches",
        ],
        "dns" => &["bench", "-p", "weft-node", "--bench", "dataplane", "--", "dns"],
        "dnsserver" => &["bench", "-p", "weft-dns", "--bench", "servers"],
        "published" => &["bench", "-p", "weft-node", "--bench", "published"],
        "docker" => &["bench", "-p", "weft-node", "--bench", "docker"],
        "cni" => &["bench", "-p", "weft-node", "--bench", "cni"],
        "cli" => &["bench", "-p", "weft-node", "--bench", "cli"],
        "dataplane" => &["bench", "-p", "weft-node", "--bench", "dataplane", "--", "throughput"],
        _ => return None,
    };
    Some(args.to_vec())
}

/// The benchmarks' own settings in force (`WEFT_BENCH_SECONDS=5`, ...), as a command prefix.
fn settings() -> Vec<String> {
    let mut found: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("WEFT_BENCH_") && k != RESULTS_ENV)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    found.sort();
    found
}

fn text_of(program: &str, args: &[&str], dir: &Path) -> String {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn commit(root: &Path) -> String {
    let id = text_of("git", &["rev-parse", "--short=10", "HEAD"], root);
    if id.is_empty() {
        return "unknown".into();
    }
    // The figures this runner writes do not make the code they measure dirty.
    let changes = [
        "status",
        "--porcelain",
        "--untracked-files=no",
        "--",
        ".",
        ":!BENCHMARKS.md",
        ":!bench/results.json",
    ];
    let dirty = !text_of("git", &changes, root).is_empty();
    if dirty { format!("{id}-dirty") } else { id }
}

fn machine() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .map_or(0, |kib| (kib + (1 << 19)) >> 20);
    let kernel = read("/proc/sys/kernel/osrelease");
    format!("{cpu}, {cores} cores, {memory_gib} GiB, Linux {}", kernel.trim())
}

fn today() -> String {
    weft_bench::date_of(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

enum Outcome {
    Measured(Run),
    /// The benchmark ran but reported nothing (it says why, e.g. not root).
    NoFigures,
    Failed(String),
}

fn run_part(root: &Path, part: &str, args: &[&str]) -> Outcome {
    let file = std::env::temp_dir().join(format!("weft-bench-{}-{part}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let mut shown = settings();
    shown.push("cargo".into());
    shown.extend(args.iter().map(|a| a.to_string()));
    let command = shown.join(" ");
    eprintln!("\n==> {part}: {command}");
    let status = Command::new("cargo").args(args).current_dir(root).env(RESULTS_ENV, &file).status();
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let _ = std::fs::remove_file(&file);
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => return Outcome::Failed(format!("{command} exited with {s}")),
        Err(e) => return Outcome::Failed(format!("cannot run cargo: {e}")),
    }
    let (figures, comparisons) = match weft_bench::parse_lines(&text) {
        Ok(lines) => lines,
        Err(e) => return Outcome::Failed(format!("unreadable figures from {part}: {e}")),
    };
    if figures.is_empty() && comparisons.is_empty() {
        return Outcome::NoFigures;
    }
    Outcome::Measured(Run {
        part: part.into(),
        command,
        date: today(),
        commit: commit(root),
        machine: machine(),
        figures,
        comparisons,
    })
}

fn load(path: &Path) -> Result<Results, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Results::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes next to the target and renames, so an interrupted run never leaves half a file.
fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let staging = path.with_extension("tmp");
    std::fs::write(&staging, text)
        .and_then(|()| std::fs::rename(&staging, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn save(root: &Path, results: &Results) -> Result<(), String> {
    let json = serde_json::to_string_pretty(results).map_err(|e| e.to_string())? + "\n";
    write_atomically(&root.join("bench/results.json"), &json)?;
    let doc_path = root.join("BENCHMARKS.md");
    let doc = std::fs::read_to_string(&doc_path).map_err(|e| format!("{}: {e}", doc_path.display()))?;
    write_atomically(&doc_path, &weft_bench::replace_section(&doc, &weft_bench::render_section(results)))
}

fn main() -> ExitCode {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default();
    let asked: Vec<String> = std::env::args().skip(1).collect();
    if asked.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: weft-bench [PART...]\nparts: {} (default: all)", PARTS.join(" "));
        return ExitCode::SUCCESS;
    }
    let parts: Vec<String> =
        if asked.is_empty() { PARTS.iter().map(|p| p.to_string()).collect() } else { asked };
    if let Some(unknown) = parts.iter().find(|p| command_of(p).is_none()) {
        eprintln!("weft-bench: unknown part {unknown:?}; parts are: {}", PARTS.join(", "));
        return ExitCode::from(2);
    }
    let mut results = match load(&root.join("bench/results.json")) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weft-bench: cannot read earlier results: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut this_run = Results::default();
    let mut problems = Vec::new();
    for part in &parts {
        let args = command_of(part).unwrap_or_default();
        match run_part(&root, part, &args) {
            Outcome::Measured(run) => {
                this_run.merge(run.clone());
                results.merge(run);
                // After every part, so an interrupted run keeps what it measured.
                if let Err(e) = save(&root, &results) {
                    problems.push(format!("cannot save results: {e}"));
                }
            }
            Outcome::NoFigures => {
                problems.push(format!("{part}: skipped, no figures (see its output above)"))
            }
            Outcome::Failed(why) => problems.push(format!("{part}: FAILED: {why}")),
        }
    }
    println!("\n{}", weft_bench::comparisons_table(&this_run));
    println!("{}", weft_bench::figures_table(&this_run));
    println!("{}", weft_bench::runs_table(&this_run));
    if problems.is_empty() {
        println!("BENCHMARKS.md and bench/results.json updated.");
        ExitCode::SUCCESS
    } else {
        for p in &problems {
            eprintln!("weft-bench: {p}");
        }
        ExitCode::FAILURE
    }
}
