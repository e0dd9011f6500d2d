//! The throughput tables: Markdown, and the JSON beside it.

use std::fmt::Write as _;

use crate::harness::Row;

/// One table per record size: absolute figures and ratios to the per-record raw limits
/// (`raw`, `raw-uring`), to the best of every raw baseline that ran in the row's committers
/// and size (`vs best raw`: the best hand-written loop, group commit included), and to the
/// best peer of the same class (`systems`).
pub fn markdown(
    rows: &[Row],
    title: &str,
    systems: &[String],
    sizes: &[usize],
    committers: &[usize],
) -> String {
    let mut out = String::new();
    for &size in sizes {
        let _ = writeln!(out, "\n### {size}-byte records, {title}\n");
        let _ = writeln!(
            out,
            "| committers | system | commits/s | vs raw | vs raw-uring | vs best raw | vs best peer | p50 µs | p99 µs | p999 µs |"
        );
        let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &c in committers {
            let at = |system: &str| {
                rows.iter()
                    .find(|r| r.size == size && r.committers == c && r.system == system)
                    .map(Row::rate)
            };
            let (raw, raw_uring) = (at("raw"), at("raw-uring"));
            let best_of = |keep: &dyn Fn(&str) -> bool| {
                systems
                    .iter()
                    .filter(|s| keep(s))
                    .filter_map(|s| at(s))
                    .fold(None, |best: Option<f64>, rate| {
                        Some(best.map_or(rate, |b| b.max(rate)))
                    })
            };
            let best_raw = best_of(&|s| s.starts_with("raw"));
            let best_peer = best_of(&|s| !s.starts_with("raw") && !s.starts_with("keel"));
            for system in systems {
                let Some(row) = rows
                    .iter()
                    .find(|r| r.size == size && r.committers == c && &r.system == system)
                else {
                    continue;
                };
                let ratio = |base: Option<f64>| {
                    base.filter(|b| *b > 0.0 && !system.starts_with("raw"))
                        .map_or("–".to_owned(), |b| format!("{:.2}x", row.rate() / b))
                };
                let _ = writeln!(
                    out,
                    "| {c} | {system} | {:.0} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} |",
                    row.rate(),
                    ratio(raw),
                    ratio(raw_uring),
                    ratio(best_raw),
                    ratio(best_peer),
                    row.p50_us,
                    row.p99_us,
                    row.p999_us
                );
            }
        }
    }
    out
}

pub fn json(rows: &[Row]) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"system\":\"{}\",\"committers\":{},\"size\":{},\"commits\":{},\"seconds\":{:.3},\"commits_per_s\":{:.1},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{}}}",
                r.system, r.committers, r.size, r.commits, r.seconds, r.rate(), r.p50_us, r.p99_us, r.p999_us
            )
        })
        .collect();
    format!("[\n  {}\n]\n", items.join(",\n  "))
}
