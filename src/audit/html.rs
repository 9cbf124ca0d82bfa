//! `audit report --format html`: the page a security reviewer opens. One
//! self-contained file: inline CSS and SVG, no script, no font, nothing
//! fetched; readable printed to PDF. Integrity comes first, then
//! deletions, refusals and what looks unusual.
//!
//! Every figure is the [`Report`]'s, so the page says what `--format
//! json` says; each figure carries a `data-figure` attribute: the JSON
//! Pointer of the same figure in the JSON document (`#len`: the length of
//! the array there). Every recorded string
//! is escaped: a caller chose some of them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::report::Report;

/// HTML-escapes text and attribute values (and control characters, which
/// a caller may have put into a recorded string).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() => {
                let _ = write!(o, "\\u{{{:x}}}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

const CSS: &str = r#"
:root { --ok: #1b7f3b; --bad: #b42318; --warn: #b54708; --ink: #1d2939; --muted: #667085; --line: #d0d5dd; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--ink); margin: 2rem auto; max-width: 1100px; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; border-bottom: 2px solid var(--line); padding-bottom: .25rem; }
h3 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
.muted { color: var(--muted); }
.verdict { padding: .8rem 1rem; border-radius: 6px; font-size: 1.1rem; font-weight: 600; margin: 1rem 0; }
.verdict.ok { background: #ecfdf3; color: var(--ok); border: 1px solid #abefc6; }
.verdict.bad { background: #fef3f2; color: var(--bad); border: 1px solid #fecdca; }
table { border-collapse: collapse; width: 100%; margin: .4rem 0 1rem; font-size: 13px; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #f9fafb; font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; word-break: break-all; }
.state-ok, .state-ok_pruned { color: var(--ok); font-weight: 600; }
.state-broken, .state-start_unaccounted { color: var(--bad); font-weight: 600; }
.cards { display: flex; gap: 1rem; flex-wrap: wrap; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: .6rem 1rem; min-width: 10rem; }
.card .v { font-size: 1.5rem; font-weight: 700; }
.finding { border-left: 4px solid var(--warn); padding: .2rem .8rem; margin: .8rem 0; }
svg text { font: 11px sans-serif; fill: var(--ink); }
@media print { body { margin: 0; max-width: none; } h2 { break-after: avoid; } table, .finding, svg { break-inside: avoid; } }
"#;

/// A colour per series, fixed by its position in the sorted names.
const PALETTE: [&str; 10] = [
    "#2e90fa", "#f79009", "#12b76a", "#f04438", "#7a5af8", "#ee46bc", "#06aed4", "#66c61c",
    "#fb6514", "#667085",
];

/// Stacked bars: one bar per key of `data` (a day), one segment per
/// series, a legend below. Counts only; no script.
fn stacked_bars(title: &str, data: &BTreeMap<String, BTreeMap<String, u64>>) -> String {
    if data.is_empty() {
        return format!("<p class=\"muted\">{}: none in the period.</p>", esc(title));
    }
    let series: Vec<&String> = {
        let mut s: Vec<&String> = data.values().flat_map(|m| m.keys()).collect();
        s.sort();
        s.dedup();
        s
    };
    let colour = |name: &str| {
        let i = series.iter().position(|s| *s == name).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };
    let max = data
        .values()
        .map(|m| m.values().sum::<u64>())
        .max()
        .unwrap_or(1)
        .max(1);
    let (left, top, height, bar, gap) = (40.0, 10.0, 160.0, 28.0, 10.0);
    let width = left + data.len() as f64 * (bar + gap) + 10.0;
    let mut o = String::new();
    let _ = write!(
        o,
        "<figure><svg role=\"img\" aria-label=\"{}\" width=\"{width:.0}\" height=\"{:.0}\" viewBox=\"0 0 {width:.0} {:.0}\">",
        esc(title),
        top + height + 40.0,
        top + height + 40.0
    );
    let _ = write!(
        o,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{width:.0}\" y2=\"{}\" stroke=\"#98a2b3\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>",
        top + height,
        top + height,
        left - 4.0,
        top + 8.0,
        left - 4.0,
        top + height
    );
    for (i, (day, by)) in data.iter().enumerate() {
        let x = left + gap / 2.0 + i as f64 * (bar + gap);
        let mut y = top + height;
        for (name, n) in by {
            let h = height * (*n as f64) / (max as f64);
            y -= h;
            let _ = write!(
                o,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar}\" height=\"{h:.1}\" fill=\"{}\"><title>{} {}: {n}</title></rect>",
                colour(name),
                esc(day),
                esc(name)
            );
        }
        let label = day.get(5..).unwrap_or(day);
        let _ = write!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x + bar / 2.0,
            top + height + 14.0,
            esc(label)
        );
    }
    o.push_str("</svg><figcaption>");
    for name in &series {
        let _ = write!(
            o,
            "<span style=\"display:inline-block;width:10px;height:10px;background:{}\"></span> {} &nbsp; ",
            colour(name),
            esc(name)
        );
    }
    let _ = write!(
        o,
        "<span class=\"muted\">{}</span></figcaption></figure>",
        esc(title)
    );
    o
}

/// `std::io::Write` as `std::fmt::Write`, remembering the first error.
pub struct IoFmt<W: std::io::Write> {
    pub inner: W,
    pub error: Option<std::io::Error>,
}

impl<W: std::io::Write> std::fmt::Write for IoFmt<W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.error.is_some() {
            return Err(std::fmt::Error);
        }
        self.inner.write_all(s.as_bytes()).map_err(|e| {
            self.error = Some(e);
            std::fmt::Error
        })
    }
}

/// One JSON Pointer reference token (RFC 6901 §3).
fn token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// The page, as a string.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    write_page(r, &mut o);
    o
}

/// The page, written as it is made (a long list of deletions is never a
/// string in memory).
pub fn write_page(r: &Report, o: &mut impl std::fmt::Write) {
    let period = format!(
        "{} to {}",
        r.since.as_deref().unwrap_or("the trail's start"),
        r.until.as_deref().unwrap_or("its end")
    );
    let intact = r.verdict.starts_with("intact");
    let _ = write!(
        o,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>batch-gateway audit report</title><style>{CSS}</style></head><body>"
    );
    let _ = write!(
        o,
        "<h1>batch-gateway audit report</h1><p class=\"muted\">Period: {} · {} chain(s)</p>",
        esc(&period),
        r.integrity.len()
    );
    let _ = write!(
        o,
        "<div class=\"verdict {}\" data-figure=\"/verdict\">{}</div>",
        if intact { "ok" } else { "bad" },
        esc(&r.verdict)
    );
    let _ = write!(
        o,
        "<div class=\"cards\"><div class=\"card\"><div class=\"v\" data-figure=\"/deletions/deleted\">{}</div>campaigns deleted</div><div class=\"card\"><div class=\"v\" data-figure=\"/requests/allow\">{}</div>requests allowed</div><div class=\"card\"><div class=\"v\" data-figure=\"/requests/deny\">{}</div>requests refused</div><div class=\"card\"><div class=\"v\" data-figure=\"/anomalies#len\">{}</div>unusual findings</div></div>",
        r.deletions.deleted,
        r.requests.allow,
        r.requests.deny,
        r.anomalies.len()
    );

    // Integrity.
    let _ = o.write_str("<h2>Integrity</h2><p class=\"muted\">Each chain (one per replica) is checked whole, whatever the period.</p><table><tr><th>chain</th><th>state</th><th class=\"n\">records</th><th>seq</th><th>first · last record</th><th class=\"n\">checkpoints</th><th>signatures</th><th class=\"n\">after last checkpoint</th><th class=\"n\">repairs</th><th class=\"n\">prunes</th><th class=\"n\">summaries</th></tr>");
    for (i, c) in r.integrity.iter().enumerate() {
        let _ = write!(
            *o,
            "<tr><td>{}</td><td class=\"state-{}\" data-figure=\"/integrity/{i}/state\">{}{}</td><td class=\"n\" data-figure=\"/integrity/{i}/records\">{}</td><td>{} – {}</td><td class=\"mono\">{} · {}</td><td class=\"n\" data-figure=\"/integrity/{i}/checkpoints\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&c.chain),
            c.state,
            c.state,
            c.broken_at
                .as_deref()
                .map(|b| format!("<br><span class=\"mono\">{}</span>", esc(b)))
                .unwrap_or_default(),
            c.records,
            c.first_seq.map_or("-".into(), |v| v.to_string()),
            c.last_seq.map_or("-".into(), |v| v.to_string()),
            esc(c.first_ts.as_deref().unwrap_or("-")),
            esc(c.last_ts.as_deref().unwrap_or("-")),
            c.checkpoints,
            match c.signatures_verified {
                Some(true) => "verified",
                Some(false) => "<b class=\"state-broken\">not verified</b>",
                None => "<span class=\"muted\">no key given</span>",
            },
            c.after_last_checkpoint,
            c.repairs.len(),
            c.prunes,
            c.summaries
        );
    }
    let _ = o.write_str("</table>");
    for c in &r.integrity {
        if let Some(head) = &c.last_checkpoint_head {
            let _ = write!(
                *o,
                "<p class=\"muted\">{}: last signed checkpoint covers head <code>{}</code> (keep it for <code>audit verify --expect-head</code>).</p>",
                esc(&c.chain),
                esc(head)
            );
        }
    }
    for c in &r.integrity {
        if !c.gaps.is_empty() || !c.repairs.is_empty() {
            let _ = write!(o, "<h3>{}: silences and repairs</h3><ul>", esc(&c.chain));
            for g in &c.gaps {
                let _ = write!(
                    o,
                    "<li>no record for {} s after seq {} ({} → {})</li>",
                    g.seconds,
                    g.after_seq,
                    esc(&g.from),
                    esc(&g.to)
                );
            }
            for (seq, why) in &c.repairs {
                let _ = write!(o, "<li>repair at seq {seq}: {}</li>", esc(why));
            }
            let _ = o.write_str("</ul>");
        }
    }

    // Deletions.
    let _ = o.write_str("<h2>Deletions</h2>");
    let _ = o.write_str(&stacked_bars(
        "campaigns deleted per day, by team (Batch answered 2xx)",
        &r.deletions.per_day_team,
    ));
    let _ = o.write_str("<h3>Per day and team</h3><table><tr><th>day</th><th>team</th><th class=\"n\">deleted</th></tr>");
    for (day, by) in &r.deletions.per_day_team {
        for (team, n) in by {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td class=\"n\" data-figure=\"/deletions/per_day_team/{}/{}\">{n}</td></tr>",
                esc(day),
                esc(team),
                esc(&token(day)),
                esc(&token(team))
            );
        }
    }
    let _ = o.write_str(
        "</table><h3>Per project</h3><table><tr><th>project</th><th class=\"n\">deleted</th></tr>",
    );
    for (p, n) in &r.deletions.per_project {
        let _ = write!(
            *o,
            "<tr><td>{}</td><td class=\"n\" data-figure=\"/deletions/per_project/{}\">{n}</td></tr>",
            esc(p),
            esc(&token(p))
        );
    }
    let _ = write!(
        o,
        "</table><h3>Every forwarded delete (<span data-figure=\"/deletions/list#len\">{}</span>)</h3><table><tr><th>time</th><th>team</th><th>subject</th><th>project</th><th>campaign</th><th class=\"n\">Batch</th><th>request id</th><th>replica</th></tr>",
        r.deletions.list.len()
    );
    let _ = r.deletions.list.for_each(|d| {
        let _ = write!(
            *o,
            "<tr><td class=\"mono\">{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td class=\"mono\">{}</td><td class=\"n\">{}</td><td class=\"mono\">{}</td><td>{}</td></tr>",
            esc(&d.ts),
            esc(&d.team),
            esc(&d.sub),
            esc(&d.project),
            esc(&d.campaign_id),
            d.status.map_or("no answer".into(), |s| s.to_string()),
            esc(&d.request_id),
            esc(&d.replica)
        );
    });
    let _ = o.write_str("</table>");

    // Refusals.
    let _ = o.write_str("<h2>Refusals</h2>");
    let _ = o.write_str(&stacked_bars(
        "refusals per day, by reason",
        &r.refusals_per_day,
    ));
    let _ = o.write_str("<table><tr><th>day</th><th>reason</th><th class=\"n\">refused</th></tr>");
    for (day, by) in &r.refusals_per_day {
        for (reason, n) in by {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td class=\"n\" data-figure=\"/refusals_per_day/{}/{}\">{n}</td></tr>",
                esc(day),
                esc(reason),
                esc(&token(day)),
                esc(&token(reason))
            );
        }
    }
    let _ = o.write_str("</table><h3>Most refused callers</h3><table><tr><th>subject</th><th class=\"n\">refused</th></tr>");
    for (who, n) in &r.most_denied_callers {
        let _ = write!(
            *o,
            "<tr><td class=\"mono\">{}</td><td class=\"n\">{n}</td></tr>",
            esc(who)
        );
    }
    let _ = o.write_str("</table><h3>Without a verified token, by client address</h3><table><tr><th>address</th><th class=\"n\">refused</th></tr>");
    for (i, (addr, n)) in r.unauthenticated_by_client_addr.iter().enumerate() {
        let _ = write!(
            *o,
            "<tr><td class=\"mono\" data-figure=\"/unauthenticated_by_client_addr/{i}/0\">{}</td><td class=\"n\" data-figure=\"/unauthenticated_by_client_addr/{i}/1\">{n}</td></tr>",
            esc(addr)
        );
    }
    let _ = o.write_str("</table>");

    // Unusual.
    let _ = write!(o, "<h2>What looks unusual ({})</h2>", r.anomalies.len());
    if r.anomalies.is_empty() {
        let _ = o.write_str("<p class=\"muted\">Nothing in the period (docs/audit.md says how each kind is decided).</p>");
    }
    for (i, a) in r.anomalies.iter().enumerate() {
        let _ = write!(
            *o,
            "<div class=\"finding\"><h3><code data-figure=\"/anomalies/{i}/kind\">{}</code> {}</h3><p><span data-figure=\"/anomalies/{i}/count\">{}</span> record(s){}</p><table><tr><th>replica</th><th class=\"n\">seq</th><th>time</th><th>request id</th></tr>",
            a.kind,
            esc(&a.subject),
            a.count,
            if (a.count as usize) > a.records.len() {
                format!(", the first {} listed", a.records.len())
            } else {
                String::new()
            }
        );
        for rec in &a.records {
            let _ = write!(
                o,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td></tr>",
                esc(&rec.replica),
                rec.seq,
                esc(&rec.ts),
                esc(&rec.request_id)
            );
        }
        let _ = o.write_str("</table></div>");
    }

    // Totals.
    let _ = o.write_str("<h2>Requests by team, project, action and replica</h2>");
    for (title, m) in [
        ("team", &r.by_team),
        ("project", &r.by_project),
        ("action", &r.by_action),
        ("replica", &r.by_replica),
    ] {
        if m.is_empty() {
            continue;
        }
        let _ = write!(
            *o,
            "<h3>By {title}</h3><table><tr><th>{title}</th><th class=\"n\">allowed</th><th class=\"n\">refused</th></tr>"
        );
        for (k, c) in m {
            let _ = write!(
                o,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(k),
                c.allow,
                c.deny
            );
        }
        let _ = o.write_str("</table>");
    }
    let _ = o.write_str("<p class=\"muted\">Generated by batch-gateway audit report. Self-contained: nothing on this page is fetched.</p></body></html>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_strings_cannot_become_markup() {
        let mut r = Report {
            verdict: "intact".into(),
            ..Report::default()
        };
        r.most_denied_callers = vec![("<script>alert(1)</script>\"'&\u{1b}[31m".into(), 1)];
        r.deletions
            .per_project
            .insert("<img src=x onerror=alert(1)>".into(), 1);
        let page = render(&r);
        assert!(!page.contains("<script"));
        assert!(!page.contains("<img"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;\\u{1b}[31m"));
        // Self-contained: no URL is ever fetched.
        for fetch in [
            "src=\"http",
            "href=\"http",
            "url(",
            "@import",
            "<link",
            "<script",
        ] {
            assert!(!page.contains(fetch), "{fetch}");
        }
    }
}
