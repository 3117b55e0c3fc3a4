//! [`Report::render_html`]: one self-contained page (inline CSS and SVG, no script, no
//! external reference), with the latency distributions of live and candidate side by side,
//! mismatches per endpoint, and side-by-side diffs of example responses.

use std::fmt::Write as _;

use crate::compare::lines;
use crate::linediff;
use crate::report::{ms, pct, EndpointReport, Example, FieldReport, LatencyHistogram, Report};

/// At most this many bars per side in the latency chart (neighbouring buckets are merged).
const MAX_BARS: usize = 48;
/// Endpoints in the mismatch chart and with details.
const MAX_ENDPOINTS: usize = 30;
/// Fields with details per endpoint.
const MAX_FIELDS: usize = 20;

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#1d2330;background:#fafbfc}
h1{font-size:1.5rem;margin:0 0 .25rem}h2{font-size:1.15rem;margin:2rem 0 .5rem;border-bottom:1px solid #dde;padding-bottom:.25rem}
h3{font-size:1rem;margin:1.5rem 0 .25rem;font-family:ui-monospace,Menlo,Consolas,monospace}
.cards{display:flex;flex-wrap:wrap;gap:.75rem;margin:1rem 0}.card{background:#fff;border:1px solid #dde;border-radius:6px;padding:.5rem .9rem;min-width:7rem}
.card b{display:block;font-size:1.3rem}.card span{color:#667;font-size:.8rem}
.bad b{color:#b42318}.good b{color:#18794e}
table{border-collapse:collapse;width:100%;background:#fff}th,td{border:1px solid #e3e5ea;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f1f3f6;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre,.diff td{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.noise{color:#778}.tag{display:inline-block;border-radius:3px;padding:0 .3rem;font-size:.75rem;background:#eef}
.tag.regression{background:#fde2e1;color:#8a1c12}.tag.noise{background:#eceef2;color:#555}
.diff{table-layout:fixed}.diff td{white-space:pre-wrap;word-break:break-all;padding:0 .4rem;border-top:0;border-bottom:0}
.diff td.l{background:#fff}.diff tr.c td.a{background:#fde2e1}.diff tr.c td.b{background:#dcfce7}.diff td.e{background:#f4f4f6}
.legend{font-size:.8rem;color:#556}.legend i{display:inline-block;width:.8rem;height:.8rem;margin:0 .3rem 0 .8rem;vertical-align:-1px}
svg text{font:11px system-ui,sans-serif;fill:#445}
"#;

const LIVE: &str = "#3b82f6";
const CANDIDATE: &str = "#f59e0b";
const MISMATCH: &str = "#dc2626";
const NOISE: &str = "#9ca3af";
const MATCH: &str = "#22c55e";

/// `s` with `&`, `<`, `>`, `"` and `'` escaped, for text and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl Report {
    /// The report as one self-contained HTML page titled `title`: no script, no external
    /// stylesheet, font or image; charts are inline SVG. Everything taken from responses is
    /// escaped.
    pub fn render_html(&self, title: &str) -> String {
        let mut h = String::with_capacity(64 * 1024);
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
             <title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
            escape(title),
            escape(title)
        );
        self.cards(&mut h);
        h.push_str("<h2>Latency, live and candidate</h2>\n");
        latency_chart(&self.latency_histogram, &mut h);
        h.push_str("<h2>Mismatches per endpoint</h2>\n");
        self.endpoint_chart(&mut h);
        self.endpoint_table(&mut h);
        h.push_str("<h2>Differences</h2>\n");
        let mut any = false;
        for e in self.endpoints.iter().take(MAX_ENDPOINTS) {
            if e.fields.is_empty() {
                continue;
            }
            any = true;
            endpoint_details(e, &mut h);
        }
        if !any {
            h.push_str("<p>No differences.</p>\n");
        }
        h.push_str("</body></html>\n");
        h
    }

    fn cards(&self, h: &mut String) {
        let l = &self.latency_ms;
        let card = |h: &mut String, class: &str, value: String, label: &str| {
            let _ = write!(
                h,
                "<div class=\"card {class}\"><b>{}</b><span>{}</span></div>",
                escape(&value),
                escape(label)
            );
        };
        h.push_str("<div class=\"cards\">");
        card(h, "", self.requests.to_string(), "requests mirrored");
        card(h, "", self.compared.to_string(), "compared");
        let class = if self.mismatched > 0 { "bad" } else { "good" };
        card(
            h,
            class,
            format!(
                "{} ({})",
                self.mismatched,
                self.mismatch_rate.map_or("-".into(), pct)
            ),
            "mismatched",
        );
        card(h, "", self.noise.to_string(), "noise only");
        card(h, "", self.failed.to_string(), "candidate failed");
        card(h, "", self.dropped.to_string(), "dropped");
        card(h, "", self.noise_samples.to_string(), "noise samples");
        card(
            h,
            "",
            format!("{} / {}", ms(l.live.p50), ms(l.candidate.p50)),
            "p50 live / candidate",
        );
        card(
            h,
            "",
            format!("{} / {}", ms(l.live.p99), ms(l.candidate.p99)),
            "p99 live / candidate",
        );
        card(
            h,
            "",
            self.latency_ratio_p99
                .map_or("-".into(), |r| format!("{r:.2}×")),
            "p99 ratio",
        );
        if let Some(d) = crate::report::notable_delay(l) {
            card(
                h,
                "",
                ms(Some(d)),
                "mirror delay p99 (busy CPU; off the candidate's p99)",
            );
        }
        h.push_str("</div>\n");
    }

    fn endpoint_chart(&self, h: &mut String) {
        let eps: Vec<&EndpointReport> = self.endpoints.iter().take(MAX_ENDPOINTS).collect();
        if eps.is_empty() {
            h.push_str("<p>Nothing compared yet.</p>\n");
            return;
        }
        let max = eps.iter().map(|e| e.compared).max().unwrap_or(1).max(1) as f64;
        let (label_w, bar_w, row) = (300.0, 560.0, 22.0);
        let height = row * eps.len() as f64 + 10.0;
        let _ = write!(
            h,
            "<p class=\"legend\"><i style=\"background:{MISMATCH}\"></i>mismatched\
             <i style=\"background:{NOISE}\"></i>noise only<i style=\"background:{MATCH}\"></i>matching</p>\
             <svg role=\"img\" aria-label=\"mismatches per endpoint\" width=\"{}\" height=\"{height}\" viewBox=\"0 0 {} {height}\">",
            label_w + bar_w + 120.0,
            label_w + bar_w + 120.0
        );
        for (i, e) in eps.iter().enumerate() {
            let y = 5.0 + row * i as f64;
            let matching = e.compared.saturating_sub(e.mismatched + e.noise);
            let _ = write!(
                h,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                label_w - 6.0,
                y + 14.0,
                escape(&crate::compare::truncate_chars(&e.endpoint, 45))
            );
            let mut x = label_w;
            for (n, color, what) in [
                (e.mismatched, MISMATCH, "mismatched"),
                (e.noise, NOISE, "noise only"),
                (matching, MATCH, "matching"),
            ] {
                if n == 0 {
                    continue;
                }
                let w = bar_w * n as f64 / max;
                let _ = write!(
                    h,
                    "<rect x=\"{x:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{color}\"><title>{n} {what}</title></rect>",
                    row - 6.0
                );
                x += w;
            }
            let _ = write!(
                h,
                "<text x=\"{:.1}\" y=\"{}\">{} / {}</text>",
                x + 6.0,
                y + 14.0,
                e.mismatched,
                e.compared
            );
        }
        h.push_str("</svg>\n");
    }

    fn endpoint_table(&self, h: &mut String) {
        if self.endpoints.is_empty() {
            return;
        }
        h.push_str(
            "<table><tr><th>endpoint</th><th>compared</th><th>mismatched</th><th>noise only</th>\
             <th>failed</th><th>p50 live / candidate</th><th>p99 live / candidate</th><th>p99 ratio</th></tr>\n",
        );
        for e in &self.endpoints {
            let l = &e.latency_ms;
            let _ = writeln!(
                h,
                "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{} ({})</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{} / {}</td>\
                 <td class=\"n\">{} / {}</td><td class=\"n\">{}</td></tr>",
                escape(&e.endpoint),
                e.compared,
                e.mismatched,
                e.mismatch_rate.map_or("-".into(), pct),
                e.noise,
                e.failed,
                ms(l.live.p50),
                ms(l.candidate.p50),
                ms(l.live.p99),
                ms(l.candidate.p99),
                e.latency_ratio_p99
                    .map_or("-".into(), |r| format!("{r:.2}×")),
            );
        }
        h.push_str("</table>\n");
    }
}

/// Grouped bars: per latency bucket, the share of live requests and of candidate responses
/// that fell in it.
fn latency_chart(hist: &LatencyHistogram, h: &mut String) {
    if hist.bounds_ms.is_empty() {
        h.push_str("<p>No latencies yet.</p>\n");
        return;
    }
    // Merge neighbouring buckets down to MAX_BARS groups.
    let n = hist.bounds_ms.len();
    let per = n.div_ceil(MAX_BARS);
    let mut groups: Vec<(f64, u64, u64)> = Vec::new();
    for start in (0..n).step_by(per) {
        let end = (start + per).min(n);
        let live: u64 = hist.live.get(start..end).map_or(0, |s| s.iter().sum());
        let cand: u64 = hist.candidate.get(start..end).map_or(0, |s| s.iter().sum());
        groups.push((hist.bounds_ms[end - 1], live, cand));
    }
    let live_total: u64 = hist.live.iter().sum::<u64>().max(1);
    let cand_total: u64 = hist.candidate.iter().sum::<u64>().max(1);
    let share = |n: u64, t: u64| n as f64 / t as f64;
    let max_share = groups
        .iter()
        .map(|&(_, l, c)| share(l, live_total).max(share(c, cand_total)))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let (left, top, plot_h, plot_w) = (56.0, 10.0, 200.0, 720.0);
    // Each group is a slot with two bars; at most 48 px wide, so that few groups stay
    // readable bars rather than slabs.
    let slot = (plot_w / groups.len() as f64).min(48.0);
    let bar = (slot - 4.0) / 2.0;
    let label_every = (60.0 / slot).ceil().max(1.0) as usize;
    let width = (left + slot * groups.len() as f64 + 40.0).max(380.0);
    let height = top + plot_h + 40.0;
    let _ = write!(
        h,
        "<p class=\"legend\"><i style=\"background:{LIVE}\"></i>live<i style=\"background:{CANDIDATE}\"></i>candidate \
         (share of each side's requests per latency bucket)</p>\
         <svg role=\"img\" aria-label=\"latency distributions\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">"
    );
    let _ = write!(
        h,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#99a\"/>",
        top + plot_h,
        width - 10.0,
        top + plot_h
    );
    let _ = write!(
        h,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
        left - 4.0,
        top + 10.0,
        pct(max_share)
    );
    for (i, &(bound, l, c)) in groups.iter().enumerate() {
        let x = left + slot * i as f64;
        for (k, (v, total, color, side)) in [
            (l, live_total, LIVE, "live"),
            (c, cand_total, CANDIDATE, "candidate"),
        ]
        .into_iter()
        .enumerate()
        {
            let s = share(v, total);
            let bh = plot_h * s / max_share;
            let _ = write!(
                h,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{bh:.1}\" fill=\"{color}\"><title>{side}: {v} ≤ {}</title></rect>",
                x + 2.0 + bar * k as f64,
                top + plot_h - bh,
                escape(&ms(Some(bound)))
            );
        }
        if i % label_every == 0 {
            let _ = write!(
                h,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                x + slot / 2.0,
                top + plot_h + 16.0,
                escape(&ms(Some(bound)))
            );
        }
    }
    let _ = writeln!(
        h,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"start\">latency (upper bound of each bucket)</text></svg>",
        left,
        top + plot_h + 34.0
    );
}

fn endpoint_details(e: &EndpointReport, h: &mut String) {
    let _ = writeln!(
        h,
        "<h3>{}</h3><table><tr><th>field</th><th>kind</th><th>requests</th><th>rate</th>\
         <th>live against live</th><th></th></tr>",
        escape(&e.endpoint)
    );
    for f in e.fields.iter().take(MAX_FIELDS) {
        let tag = if f.noise {
            "<span class=\"tag noise\">noise</span>"
        } else {
            "<span class=\"tag regression\">counts</span>"
        };
        let _ = writeln!(
            h,
            "<tr{}><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td>{tag}</td></tr>",
            if f.noise { " class=\"noise\"" } else { "" },
            escape(&f.path),
            f.kind,
            f.count,
            pct(f.rate),
            f.noise_rate.map_or("-".into(), pct),
        );
    }
    h.push_str("</table>\n");
    for f in e.fields.iter().filter(|f| !f.noise).take(MAX_FIELDS) {
        if let Some(x) = &f.example {
            example(f, x, h);
        }
    }
}

fn example(f: &FieldReport, x: &Example, h: &mut String) {
    let _ = writeln!(
        h,
        "<p><code>{}</code> ({}) — e.g. <code>{}</code>: live <code>{}</code>, candidate <code>{}</code></p>",
        escape(&f.path),
        f.kind,
        escape(&x.request),
        escape(&x.live),
        escape(&x.candidate)
    );
    let (Some(a), b) = (&x.live_body, &x.candidate_body) else {
        return;
    };
    let b = b.as_deref().unwrap_or("(no response)");
    let la = lines(a);
    let lb = lines(b);
    h.push_str("<table class=\"diff\"><tr><th>live</th><th>candidate</th></tr>\n");
    for r in linediff::side_by_side(&la, &lb) {
        let cell = |h: &mut String, side: &str, t: Option<&str>| match t {
            Some(t) => {
                let _ = write!(h, "<td class=\"{side}\">{}</td>", escape(t));
            }
            None => h.push_str("<td class=\"e\"></td>"),
        };
        h.push_str(if r.changed {
            "<tr class=\"c\">"
        } else {
            "<tr>"
        });
        cell(h, if r.changed { "a" } else { "l" }, r.left);
        cell(h, if r.changed { "b" } else { "l" }, r.right);
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Aggregator, CompareOptions, Counts, NoiseOptions, RequestCopy, ResponseCopy, Sample,
    };
    use bytes::Bytes;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    fn report() -> Report {
        let mut agg = Aggregator::new(CompareOptions::default(), NoiseOptions::default());
        let resp = |body: &str, ms: u64| ResponseCopy {
            status: 200,
            headers: vec![("content-type".into(), Bytes::from_static(b"text/html"))],
            body: Bytes::copy_from_slice(body.as_bytes()),
            body_truncated: false,
            latency: Duration::from_millis(ms),
        };
        for i in 0..50u64 {
            agg.add(&Sample {
                request: Arc::new(RequestCopy {
                    id: "0123456789abcdef01234567".into(),
                    started: SystemTime::UNIX_EPOCH,
                    method: "GET".into(),
                    target: format!("/page/{i}?q=<b>"),
                    headers: vec![],
                    body: Bytes::new(),
                    body_truncated: false,
                }),
                live: resp("<p>hello</p>\n<script>alert('x')</script>\n<a href=\"https://evil.example/\">same</a>", 5 + i % 7),
                candidate: Ok(resp("<p>hello</p>\n<script>alert(\"y\")</script>\n<a href=\"https://evil.example/\">same</a>", 8 + i % 9)),
                noise: None,
            });
        }
        agg.report(Counts {
            mirrored: 50,
            dropped: 0,
            skipped: 0,
            mirror_delay_p99: None,
        })
    }

    #[test]
    fn html_is_self_contained_escaped_and_has_charts() {
        let h = report().render_html("Shadow <v2> & co");
        assert!(h.starts_with("<!DOCTYPE html>"));
        assert!(h.contains("<title>Shadow &lt;v2&gt; &amp; co</title>"));
        // Self-contained: no script, no reference to anything outside.
        for bad in [
            "<script",
            "src=\"http",
            "href=\"http",
            "src='http",
            "href='http",
            "url(http",
            "@import",
            "<link",
        ] {
            assert!(!h.contains(bad), "{bad} in the page");
        }
        assert!(!h.contains(" src="), "no src attributes at all");
        assert!(
            h.matches("<svg").count() >= 2,
            "latency and endpoint charts"
        );
        // The response bodies are shown escaped, side by side.
        assert!(h.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(h.contains("&lt;script&gt;alert(&quot;y&quot;)&lt;/script&gt;"));
        assert!(h.contains("<tr class=\"c\">"));
        assert!(h.contains("GET /page/{id}"));
        assert!(h.contains("GET /page/0?q=&lt;b&gt;"));
        assert!(h.contains("body:line 2"));
    }

    #[test]
    fn empty_report_renders() {
        let h = Report::default().render_html("empty");
        assert!(
            h.contains("No latencies yet")
                && h.contains("Nothing compared yet")
                && h.contains("No differences")
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
