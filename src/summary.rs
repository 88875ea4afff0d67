//! `summary.md` of an experiment: per metric, the mean over seeds of every sampler at every step
//! count, and which sampler is best within each budget of network evaluations: the question
//! "which sampler, at which step count, gives which quality" answered in a table.

use scoreflow_solvers::SamplerSpec;
use serde_json::Value;
use std::collections::BTreeMap;

/// One (sampler label, steps) cell, averaged over the seeds that have the metric. `steps` is
/// None for an adaptive sampler (it picks its own steps; its grid only gives the ends).
struct Cell {
    label: String,
    steps: Option<u64>,
    nfe: f64,
    mean: f64,
    seeds: usize,
}

/// "18 steps", "1 step", "adaptive".
fn steps_text(steps: Option<u64>) -> String {
    match steps {
        Some(1) => "1 step".into(),
        Some(n) => format!("{n} steps"),
        None => "adaptive".into(),
    }
}

/// " (2 of 3 seeds)" for a cell that not every seed has, else nothing.
fn partial(c: &Cell, seeds: usize) -> String {
    if c.seeds < seeds {
        format!(" ({} of {seeds} seeds)", c.seeds)
    } else {
        String::new()
    }
}

/// Whether larger values of a metric are better (`mode-coverage` and `class-accuracy`).
fn higher_is_better(metric: &str) -> bool {
    metric == "mode-coverage" || metric == "class-accuracy"
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

/// A cell's key: the sampler's label and its step count (None: adaptive).
type Key = (String, Option<u64>);

fn cells(rows: &[Value], metric: &str) -> Vec<Cell> {
    let mut by: BTreeMap<Key, Vec<(f64, f64)>> = BTreeMap::new();
    let mut order: Vec<Key> = Vec::new();
    for r in rows {
        let (Some(v), Some(nfe), Some(steps)) =
            (r[metric].as_f64(), r["nfe"].as_u64(), r["steps"].as_u64())
        else {
            continue;
        };
        let adaptive = serde_json::from_value::<SamplerSpec>(r["params"].clone())
            .is_ok_and(|s| s.is_adaptive());
        let key = (
            r["label"].as_str().unwrap_or("").to_string(),
            (!adaptive).then_some(steps),
        );
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

/// Quality targets for a lower-is-better metric: the values 1 and 3 times a power of ten that
/// some cell reaches and some does not (from the largest down).
fn targets(cells: &[Cell]) -> Vec<f64> {
    let means: Vec<f64> = cells
        .iter()
        .map(|c| c.mean)
        .filter(|m| m.is_finite() && *m > 0.0)
        .collect();
    let (Some(lo), Some(hi)) = (
        means.iter().copied().reduce(f64::min),
        means.iter().copied().reduce(f64::max),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for k in (lo.log10().floor() as i32..=hi.log10().ceil() as i32).rev() {
        for f in [3.0, 1.0] {
            let t = f * 10f64.powi(k);
            if t >= lo && t < hi {
                out.push(t);
            }
        }
    }
    out
}

/// Quality targets for a higher-is-better metric (a fraction: an accuracy, a coverage): those of
/// 0.5, 0.9, 0.99 and 1 that some cell reaches and some does not (from the loosest up).
fn targets_at_least(cells: &[Cell]) -> Vec<f64> {
    [0.5, 0.9, 0.99, 1.0]
        .into_iter()
        .filter(|&t| cells.iter().any(|c| c.mean >= t) && cells.iter().any(|c| c.mean < t))
        .collect()
}

/// The cheapest cell (fewest mean evaluations; then the better value) whose mean reaches
/// `target`: at most it, or at least it where higher is better.
fn cheapest_reaching(cells: &[Cell], target: f64, higher: bool) -> Option<&Cell> {
    cells
        .iter()
        .filter(|c| {
            if higher {
                c.mean >= target
            } else {
                c.mean <= target
            }
        })
        .min_by(|a, b| {
            let better = if higher {
                b.mean.total_cmp(&a.mean)
            } else {
                a.mean.total_cmp(&b.mean)
            };
            a.nfe.total_cmp(&b.nfe).then(better)
        })
}

/// Why a metric is not ranked by budget under the timesteps placement.
pub const OWN_ENDS: &str = "Not ranked by budget: each step count is measured against its own \
     reference (between its own first and last levels), so values at different step counts are \
     not comparable.";

/// Why no metric is ranked by budget where cells start from data (SDEdit).
pub const FROM_DATA: &str = "Not ranked by budget: the cells start from data at levels that \
     differ between grids and step counts (SDEdit's strength or denoise), so a cheap cell that \
     keeps more of its input would rank above a better sampler; compare within one grid.";

/// The summary of `rows` (an experiment's cells, sorted by seed, sampler, steps) for `metrics`
/// (with their titles), with the floors where known, as Markdown. The metrics in `unranked` get
/// their table but no budget ranking (their values at different step counts measure different
/// things: under the timesteps placement each step count has its own reference).
pub fn markdown(
    title: &str,
    rows: &[Value],
    metrics: &[(&str, &str)],
    floors: &BTreeMap<String, f64>,
    unranked: &[(&str, &str)],
) -> String {
    let seeds = rows
        .iter()
        .filter_map(|r| r["seed"].as_u64())
        .collect::<std::collections::BTreeSet<u64>>()
        .len();
    let mut out = format!(
        "# {title}\n\nMeans over {seeds} seed{} of each sampler at each step count (NFE in \
         parentheses: network evaluations per sample, averaged over seeds), then the best sampler \
         within each budget of evaluations and the cheapest sampler reaching each quality. Lower \
         is better for every metric but mode-coverage and class-accuracy{}.\n",
        if seeds == 1 { "" } else { "s" },
        if metrics.iter().any(|(m, _)| *m == "input-distance") {
            " (input-distance is no quality: how much of the SDEdit input is kept)"
        } else {
            ""
        },
    );
    for (m, what) in metrics {
        let cells = cells(rows, m);
        if cells.is_empty() {
            continue;
        }
        let floor = floors
            .get(*m)
            .map(|f| match *m {
                "class-accuracy" => format!("; the classifier's on fresh data: {}", fmt3(*f)),
                _ => format!(
                    "; fresh data's own value (the sampling-noise floor): {}",
                    fmt3(*f)
                ),
            })
            .unwrap_or_default();
        out += &format!("\n## {m}: {what}{floor}\n\n");
        // Columns: step counts ascending, then the adaptive samplers' column.
        let mut steps: Vec<Option<u64>> = cells.iter().map(|c| c.steps).collect();
        steps.sort_by_key(|s| (s.is_none(), *s));
        steps.dedup();
        let mut labels: Vec<&str> = Vec::new();
        for c in &cells {
            if !labels.contains(&c.label.as_str()) {
                labels.push(&c.label);
            }
        }
        out += "| sampler |";
        for s in &steps {
            out += &format!(" {} |", steps_text(*s));
        }
        out += "\n|---|";
        out += &"---|".repeat(steps.len());
        out += "\n";
        for l in &labels {
            out += &format!("| {l} |");
            for s in &steps {
                match cells.iter().find(|c| c.label == *l && c.steps == *s) {
                    Some(c) => {
                        out += &format!(
                            " {} ({}){} |",
                            fmt3(c.mean),
                            fmt_nfe(c.nfe),
                            partial(c, seeds)
                        )
                    }
                    None => out += " |",
                }
            }
            out += "\n";
        }
        if *m == "input-distance" {
            out += "\nNot ranked: the distance to the SDEdit input says how much of the input a \
                    sampler keeps, which is neither better nor worse; read it beside a quality \
                    metric.\n";
            continue;
        }
        if let Some((_, why)) = unranked.iter().find(|(u, _)| u == m) {
            out += &format!("\n{why}\n");
            continue;
        }
        out += &format!(
            "\n| NFE at most | best sampler | steps | NFE | {m} |\n|---|---|---|---|---|\n"
        );
        for (b, c) in frontier(&cells, m) {
            out += &format!(
                "| {} | {} | {} | {} | {}{} |\n",
                fmt_nfe(b),
                c.label,
                c.steps.map_or("adaptive".to_string(), |s| s.to_string()),
                fmt_nfe(c.nfe),
                fmt3(c.mean),
                partial(c, seeds)
            );
        }
        // The other way round: the fewest evaluations that reach a quality.
        let higher = higher_is_better(m);
        let goals = if higher {
            targets_at_least(&cells)
        } else {
            targets(&cells)
        };
        if !goals.is_empty() {
            out += &format!(
                "\n| {m} at {} | cheapest sampler | steps | NFE | {m} |\n|---|---|---|---|---|\n",
                if higher { "least" } else { "most" }
            );
            // A target whose cheapest cell also reaches the next, tighter one is left out.
            let mut rows: Vec<(f64, &Cell)> = Vec::new();
            for t in goals {
                if let Some(c) = cheapest_reaching(&cells, t, higher) {
                    if rows.last().is_some_and(|(_, p)| std::ptr::eq(*p, c)) {
                        rows.pop();
                    }
                    rows.push((t, c));
                }
            }
            for (t, c) in rows {
                {
                    out += &format!(
                        "| {} | {} | {} | {} | {}{} |\n",
                        fmt3(t),
                        c.label,
                        c.steps.map_or("adaptive".to_string(), |s| s.to_string()),
                        fmt_nfe(c.nfe),
                        fmt3(c.mean),
                        partial(c, seeds)
                    );
                }
            }
        }
    }
    out
}

/// The best-within-budget lines of `metric`, for the terminal; None where no cell has it.
pub fn headline(rows: &[Value], metric: &str) -> Option<String> {
    // (Nor for input-distance, which is no quality.)
    if metric == "input-distance" {
        return None;
    }
    let cells = cells(rows, metric);
    let lines: Vec<String> = frontier(&cells, metric)
        .into_iter()
        .map(|(b, c)| {
            format!(
                "  NFE <= {:>5}: {}{}, {metric} {}",
                fmt_nfe(b),
                c.label,
                c.steps
                    .map_or(String::new(), |s| format!(" at {}", steps_text(Some(s)))),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(label: &str, kind: &str, steps: u64, nfe: u64, seed: u64, m: (&str, f64)) -> Value {
        let mut r = json!({"label": label, "params": {"kind": kind}, "steps": steps, "nfe": nfe,
            "seed": seed});
        r[m.0] = json!(m.1);
        r
    }

    #[test]
    fn the_cheapest_cell_reaching_each_quality_is_listed() {
        // Five cells of one metric: (label, steps, NFE, value).
        let cells = |m: &str, v: [f64; 5]| -> Vec<Value> {
            [
                ("euler", 4, 4),
                ("euler", 8, 8),
                ("euler", 16, 16),
                ("heun", 4, 7),
                ("heun", 8, 15),
            ]
            .iter()
            .zip(v)
            .map(|(&(l, s, n), v)| row(l, l, s, n, 0, (m, v)))
            .collect()
        };
        let rows = cells("rms", [0.5, 0.2, 0.09, 0.3, 0.02]);
        let md = markdown("t", &rows, &[("rms", "err")], &BTreeMap::new(), &[]);
        // Targets 0.3, 0.1 and 0.03 lie between the best (0.02) and the worst (0.5) cell; heun
        // at 15 NFE is the cheapest for both 0.1 and 0.03, listed once, at the tighter one.
        assert!(
            md.contains("| rms at most | cheapest sampler | steps | NFE | rms |"),
            "{md}"
        );
        assert!(md.contains("| 0.300 | heun | 4 | 7 | 0.300 |"), "{md}");
        assert!(!md.contains("| 0.100 |"), "{md}");
        assert!(md.contains("| 0.0300 | heun | 8 | 15 | 0.0200 |"), "{md}");
        assert!(
            !md.contains("| 1.00 |") && !md.contains("| 0.0100 |"),
            "{md}"
        );
        // Where higher is better (class-accuracy, mode-coverage), the cheapest cell reaching
        // at least 0.5, 0.9, 0.99 and 1 where some cell does and some does not.
        let rows = cells("class-accuracy", [0.6, 0.95, 0.992, 0.4, 1.0]);
        let md = markdown(
            "t",
            &rows,
            &[("class-accuracy", "a")],
            &BTreeMap::new(),
            &[],
        );
        assert!(
            md.contains(
                "| class-accuracy at least | cheapest sampler | steps | NFE | class-accuracy |"
            ),
            "{md}"
        );
        assert!(!md.contains("class-accuracy at most"), "{md}");
        assert!(md.contains("| 0.500 | euler | 4 | 4 | 0.600 |"), "{md}");
        assert!(md.contains("| 0.900 | euler | 8 | 8 | 0.950 |"), "{md}");
        // 0.99 and 1: euler at 16 reaches 0.99 with 16 NFE; heun at 15 reaches both, cheaper,
        // so it is listed once, at 1.
        assert!(!md.contains("| 0.990 |"), "{md}");
        assert!(md.contains("| 1.00 | heun | 8 | 15 | 1.00 |"), "{md}");
    }

    #[test]
    fn higher_coverage_wins_and_partial_and_adaptive_cells_are_marked() {
        let c = |label: &str, steps: u64, nfe: u64, seed: u64, v: f64| {
            row(label, label, steps, nfe, seed, ("mode-coverage", v))
        };
        let rows = vec![
            c("euler", 4, 4, 0, 0.5),
            c("euler", 4, 4, 1, 0.75),
            c("heun", 4, 7, 0, 1.0),
            c("heun", 4, 7, 1, 1.0),
            c("euler", 8, 8, 0, 0.875),
            // seed 1 of euler at 8 steps is missing
        ];
        let md = markdown(
            "t",
            &rows,
            &[("mode-coverage", "cov")],
            &BTreeMap::new(),
            &[],
        );
        // Budget 4: euler (0.625); budget 7: heun (1.0, higher is better), and heun stays best.
        assert!(md.contains("| 4 | euler | 4 | 4 | 0.625 |"), "{md}");
        assert!(md.contains("| 7 | heun | 4 | 7 | 1.00 |"), "{md}");
        assert!(!md.contains("| 8 | euler"), "{md}");
        assert!(md.contains("0.875 (8) (1 of 2 seeds)"), "{md}");
        // Lower is better for the others: the same values as an error pick euler at 7 and 8.
        let rows: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r["rms"] = r["mode-coverage"].clone();
                r
            })
            .collect();
        let h = headline(&rows, "rms").unwrap();
        assert!(
            h.contains("NFE <=     4: euler at 4 steps, rms 0.625"),
            "{h}"
        );
        assert!(!h.contains("heun"), "{h}");
        // An adaptive sampler's cell has no step count; unranked metrics get no budget table.
        let mut a = c("dpm-adaptive", 2, 31, 0, 0.9);
        a["params"] = json!({"kind": "dpm-adaptive"});
        let md = markdown(
            "t",
            &[a],
            &[("mode-coverage", "cov")],
            &BTreeMap::new(),
            &[],
        );
        assert!(md.contains("| sampler | adaptive |"), "{md}");
        assert!(
            md.contains("| 31 | dpm-adaptive | adaptive | 31 | 0.900 |"),
            "{md}"
        );
        let md = markdown(
            "t",
            &rows,
            &[("rms", "err")],
            &BTreeMap::new(),
            &[("rms", OWN_ENDS)],
        );
        assert!(
            md.contains("Not ranked by budget") && !md.contains("NFE at most"),
            "{md}"
        );
        assert!(md.contains("| sampler | 4 steps | 8 steps |"), "{md}");
    }
}
