//! `summary.md` of an experiment: per metric, the mean over seeds of every sampler at every step
//! count, and which sampler is best within each budget of network evaluations: the question
//! "which sampler, at which step count, gives which quality" answered in a table.

use serde_json::Value;
use std::collections::BTreeMap;

/// One (sampler label, steps) cell, averaged over the seeds that have the metric.
struct Cell {
    label: String,
    steps: u64,
    nfe: f64,
    mean: f64,
    seeds: usize,
}

/// Whether larger values of a metric are better (only `mode-coverage`).
fn higher_is_better(metric: &str) -> bool {
    metric == "mode-coverage"
}

/// Three significant digits, plain for moderate magnitudes, scientific otherwise.
pub fn fmt3(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || (1e-2..1e4).contains(&a) {
        let digits = if a == 0.0 {
            3
        } else {
            (2 - a.log10().floor() as i32).max(0) as usize
        };
        format!("{v:.digits$}")
    } else {
        format!("{v:.2e}")
    }
}

/// A mean NFE: whole where it is (every sampler but the adaptive ones), else three digits.
fn fmt_nfe(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        fmt3(v)
    }
}

fn cells(rows: &[Value], metric: &str) -> Vec<Cell> {
    let mut by: BTreeMap<(String, u64), Vec<(f64, f64)>> = BTreeMap::new();
    let mut order: Vec<(String, u64)> = Vec::new();
    for r in rows {
        let (Some(v), Some(nfe), Some(steps)) =
            (r[metric].as_f64(), r["nfe"].as_u64(), r["steps"].as_u64())
        else {
            continue;
        };
        let key = (r["label"].as_str().unwrap_or("").to_string(), steps);
        if !by.contains_key(&key) {
            order.push(key.clone());
        }
        by.entry(key).or_default().push((nfe as f64, v));
    }
    order
        .into_iter()
        .map(|key| {
            let c = &by[&key];
            let k = c.len() as f64;
            Cell {
                label: key.0,
                steps: key.1,
                nfe: c.iter().map(|p| p.0).sum::<f64>() / k,
                mean: c.iter().map(|p| p.1).sum::<f64>() / k,
                seeds: c.len(),
            }
        })
        .collect()
}

/// The best cell with at most `budget` mean evaluations.
fn best_within<'a>(cells: &'a [Cell], metric: &str, budget: f64) -> Option<&'a Cell> {
    let better = |a: &Cell, b: &Cell| {
        if higher_is_better(metric) {
            a.mean > b.mean
        } else {
            a.mean < b.mean
        }
    };
    cells.iter().filter(|c| c.nfe <= budget + 1e-9).fold(
        None,
        |best: Option<&Cell>, c| match best {
            Some(b) if !better(c, b) => Some(b),
            _ => Some(c),
        },
    )
}

/// The best cell within each budget of evaluations, the budgets being the cells' (mean) NFEs;
/// a budget whose best cell is the previous budget's is left out.
fn frontier<'a>(cells: &'a [Cell], metric: &str) -> Vec<(f64, &'a Cell)> {
    let mut budgets: Vec<f64> = cells.iter().map(|c| c.nfe).collect();
    budgets.sort_by(|a, b| a.total_cmp(b));
    budgets.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    let mut out: Vec<(f64, &Cell)> = Vec::new();
    for b in budgets {
        if let Some(c) = best_within(cells, metric, b) {
            if !out.last().is_some_and(|(_, p)| std::ptr::eq(*p, c)) {
                out.push((b, c));
            }
        }
    }
    out
}

/// The summary of `rows` (an experiment's cells, sorted by seed, sampler, steps) for `metrics`
/// (with their titles), with the floors where known, as Markdown.
pub fn markdown(
    title: &str,
    rows: &[Value],
    metrics: &[(&str, &str)],
    floors: &BTreeMap<String, f64>,
) -> String {
    let seeds: std::collections::BTreeSet<u64> =
        rows.iter().filter_map(|r| r["seed"].as_u64()).collect();
    let mut out = format!(
        "# {title}\n\nMeans over {} seed{} of each sampler at each step count (NFE in parentheses: \
         network evaluations per sample, averaged over seeds), then the best sampler within each \
         budget of evaluations. {} is better for every metric but mode-coverage.\n",
        seeds.len(),
        if seeds.len() == 1 { "" } else { "s" },
        "Lower"
    );
    for (m, what) in metrics {
        let cells = cells(rows, m);
        if cells.is_empty() {
            continue;
        }
        let floor = floors
            .get(*m)
            .map(|f| format!("; between two fresh data sets: {}", fmt3(*f)))
            .unwrap_or_default();
        out += &format!("\n## {m}: {what}{floor}\n\n");
        let mut steps: Vec<u64> = cells.iter().map(|c| c.steps).collect();
        steps.sort_unstable();
        steps.dedup();
        let mut labels: Vec<&str> = Vec::new();
        for c in &cells {
            if !labels.contains(&c.label.as_str()) {
                labels.push(&c.label);
            }
        }
        out += "| sampler |";
        for s in &steps {
            out += &format!(" {s} steps |");
        }
        out += "\n|---|";
        out += &"---|".repeat(steps.len());
        out += "\n";
        for l in &labels {
            out += &format!("| {l} |");
            for s in &steps {
                match cells.iter().find(|c| c.label == *l && c.steps == *s) {
                    Some(c) => out += &format!(" {} ({}) |", fmt3(c.mean), fmt_nfe(c.nfe)),
                    None => out += " |",
                }
            }
            out += "\n";
        }
        out += &format!(
            "\n| NFE at most | best sampler | steps | NFE | {m} |\n|---|---|---|---|---|\n"
        );
        for (b, c) in frontier(&cells, m) {
            let partial = if c.seeds < seeds.len() {
                format!(" ({} of {} seeds)", c.seeds, seeds.len())
            } else {
                String::new()
            };
            out += &format!(
                "| {} | {} | {} | {} | {}{partial} |\n",
                fmt_nfe(b),
                c.label,
                c.steps,
                fmt_nfe(c.nfe),
                fmt3(c.mean)
            );
        }
    }
    out
}

/// The best-within-budget lines of `metric`, for the terminal; None where no cell has it.
pub fn headline(rows: &[Value], metric: &str) -> Option<String> {
    let cells = cells(rows, metric);
    let lines: Vec<String> = frontier(&cells, metric)
        .into_iter()
        .map(|(b, c)| {
            format!(
                "  NFE <= {:>5}: {} at {} steps, {metric} {}",
                fmt_nfe(b),
                c.label,
                c.steps,
                fmt3(c.mean)
            )
        })
        .collect();
    (!lines.is_empty()).then(|| {
        format!(
            "best {metric} within a budget of evaluations (mean over seeds):\n{}",
            lines.join("\n")
        )
    })
}
