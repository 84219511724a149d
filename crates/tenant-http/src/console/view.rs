//! The console's HTML: one layout (navigation, a skip link, landmarks),
//! tables, forms that carry the session's CSRF token, and charts drawn as
//! SVG on the server so they read without JavaScript. The stylesheet is a
//! file of its own (`/admin/console.css`), so the pages' CSP allows no
//! inline style.

use maud::{DOCTYPE, Markup, html};

use tenant::console::Role;

/// The stylesheet, served at `/admin/console.css`.
pub const CSS: &str = "\
*{box-sizing:border-box}\
body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b;background:#f4f5f7;line-height:1.4}\
a{color:#0b57d0}\
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#fff;padding:.5rem;z-index:2}\
header{background:#1d2a3a;color:#fff;padding:.6rem 1rem;display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:center}\
header a{color:#fff}header .who{margin-left:auto;font-size:.9rem}\
header form{display:inline}header button{margin:0;padding:.3rem .8rem;font-size:.9rem;background:#fff;color:#1d2a3a}\
nav ul{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:.2rem .9rem}\
nav a{color:#fff;text-decoration:none;padding:.2rem 0}nav a[aria-current=page]{border-bottom:3px solid #8ab4f8}\
main{max-width:72rem;margin:0 auto;padding:1rem;overflow-wrap:anywhere}\
h1{font-size:1.5rem;margin:.5rem 0 1rem}h2{font-size:1.15rem;margin:1.5rem 0 .5rem}\
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(10rem,1fr));gap:.8rem}\
.card{background:#fff;border:1px solid #d0d4da;border-radius:6px;padding:.8rem}\
.card .n{font-size:1.6rem;font-weight:700;display:block}\
.scroll{overflow-x:auto;background:#fff;border:1px solid #d0d4da;border-radius:6px}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid #e3e6ea;vertical-align:top}\
th{background:#eef0f3;font-weight:600}\
dl{display:grid;grid-template-columns:minmax(8rem,14rem) 1fr;gap:.3rem 1rem;background:#fff;border:1px solid #d0d4da;border-radius:6px;padding:.8rem;margin:0}\
dt{font-weight:600}dd{margin:0}\
@media (max-width:40rem){dl{grid-template-columns:1fr}dd{margin-bottom:.5rem}}\
form.filters{display:flex;flex-wrap:wrap;gap:.6rem;align-items:flex-end;margin-bottom:1rem}\
label{display:block;font-weight:600;font-size:.9rem}\
input,select,textarea{font:inherit;padding:.4rem;border:1px solid #767676;border-radius:4px;max-width:100%}\
button{font:inherit;padding:.45rem 1rem;border:0;border-radius:4px;background:#0b57d0;color:#fff;cursor:pointer;margin-top:.3rem}\
button.danger{background:#a4000f}\
.actions{display:flex;flex-wrap:wrap;gap:.6rem}.actions form{margin:0}\
.ok{color:#0a6b2d;font-weight:600}.bad{color:#a4000f;font-weight:600}.warn{color:#8a4b00;font-weight:600}\
.notice{background:#e8f0fe;border-left:4px solid #0b57d0;padding:.6rem .8rem;margin:1rem 0}\
.alert{background:#fde7e9;border-left:4px solid #a4000f;padding:.6rem .8rem;margin:1rem 0}\
.secret{font-family:monospace;background:#fff;border:1px dashed #767676;padding:.5rem;display:block}\
.pager{margin:1rem 0}\
svg{max-width:100%;height:auto;background:#fff;border:1px solid #d0d4da;border-radius:6px}\
.legend span{margin-right:1rem}.sw{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:middle}\
.sw.s{background:#1e8e3e}.sw.f{background:#c5221f}.sw.i{background:#1a73e8}.sw.y{background:#f9ab00}.sw.e{background:#9334e6}\
a:focus,button:focus,input:focus,select:focus,textarea:focus{outline:3px solid #8ab4f8;outline-offset:2px}";

/// The sections, in the navigation's order: (path, label).
const SECTIONS: &[(&str, &str)] = &[
    ("/admin", "Overview"),
    ("/admin/users", "Users"),
    ("/admin/groups", "Groups"),
    ("/admin/sync", "Synchronisation"),
    ("/admin/sign-ins", "Sign-ins"),
    ("/admin/audit", "Audit"),
    ("/admin/domains", "Domains"),
    ("/admin/applications", "Applications"),
    ("/admin/agents", "PTA agents"),
    ("/admin/branding", "Branding"),
    ("/admin/roles", "Roles"),
];

/// Who is looking, for the header and the forms.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub name: String,
    pub role: Role,
    pub csrf: String,
}

/// A whole page: `section` is the navigation entry to mark current.
pub fn page(viewer: Option<&Viewer>, section: &str, title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " – idbridge admin" }
                link rel="stylesheet" href="/admin/console.css";
            }
            body {
                a.skip href="#content" { "Skip to content" }
                header {
                    strong { "idbridge admin" }
                    @if let Some(v) = viewer {
                        nav aria-label="Sections" {
                            ul {
                                @for (path, label) in SECTIONS {
                                    li {
                                        @if *path == section {
                                            a href=(path) aria-current="page" { (label) }
                                        } @else {
                                            a href=(path) { (label) }
                                        }
                                    }
                                }
                            }
                        }
                        span.who { (v.name) " (" (v.role.as_str()) ") " }
                        form method="post" action="/admin/sign-out" {
                            (csrf_field(v))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="content" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
    .into_string()
}

pub fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf); }
}

/// A one-button form (an action on an object), shown only to a role that may use it.
pub fn action(viewer: &Viewer, allowed: bool, path: &str, label: &str, danger: bool) -> Markup {
    html! {
        @if allowed {
            form method="post" action=(path) {
                (csrf_field(viewer))
                @if danger { button.danger type="submit" { (label) } } @else { button type="submit" { (label) } }
            }
        }
    }
}

/// Epoch seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn when(secs: i64) -> String {
    tenant::util::display_time(secs)
}

/// An RFC 3339 time as stored, shown like [`when`].
pub fn when_text(rfc3339: &str) -> String {
    tenant::util::parse_rfc3339(rfc3339).map_or_else(|| rfc3339.to_string(), when)
}

/// A duration in words: `45 s`, `12 min`, `3 h`, `2 d`.
pub fn age(secs: i64) -> String {
    match secs.max(0) {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// Milliseconds as seconds with one decimal.
pub fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// A stacked bar chart: one bar per x label, one colour per series.
/// `series` are (name, CSS class of its swatch, fill colour); `bars` are
/// (label, one value per series). Readable without JavaScript: each bar
/// has a `<title>`, and the chart a text summary for screen readers.
pub fn bar_chart(summary: &str, series: &[(&str, &str, &str)], bars: &[(String, Vec<f64>)], unit: &str) -> Markup {
    const WIDTH: f64 = 720.0;
    const HEIGHT: f64 = 200.0;
    const LEFT: f64 = 48.0;
    const BOTTOM: f64 = 24.0;
    let max = bars.iter().map(|(_, v)| v.iter().sum::<f64>()).fold(0.0_f64, f64::max).max(1.0);
    // A margin on the right, so the last bar's label is not cut.
    let slot = (WIDTH - LEFT - 24.0) / bars.len().max(1) as f64;
    let bar_width = (slot * 0.7).max(1.0);
    let scale = (HEIGHT - BOTTOM - 8.0) / max;
    // Label about eight bars, whatever their number.
    let label_every = bars.len().div_ceil(8).max(1);
    // Each bar's segments, bottom up: (y, height, fill).
    let drawn: Vec<(f64, Vec<Segment<'_>>)> = bars
        .iter()
        .enumerate()
        .map(|(i, (_, values))| {
            let x = LEFT + i as f64 * slot + (slot - bar_width) / 2.0;
            let mut base = HEIGHT - BOTTOM;
            let mut segments = Vec::new();
            for (v, (_, _, fill)) in values.iter().zip(series) {
                let h = v * scale;
                if h > 0.0 {
                    segments.push((base - h, h, *fill));
                    base -= h;
                }
            }
            (x, segments)
        })
        .collect();
    html! {
        figure {
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(summary) {
                line x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH) y2=(HEIGHT - BOTTOM) stroke="#767676" {}
                text x="4" y="14" font-size="11" fill="#1b1b1b" { (format_value(max)) " " (unit) }
                text x="4" y=(HEIGHT - BOTTOM) font-size="11" fill="#1b1b1b" { "0" }
                @for (i, ((label, values), (x, segments))) in bars.iter().zip(&drawn).enumerate() {
                    g {
                        title { (label) ": " (values.iter().zip(series).map(|(v, (name, _, _))| format!("{name} {}", format_value(*v))).collect::<Vec<_>>().join(", ")) }
                        @for (y, h, fill) in segments {
                            rect x=(format!("{x:.1}")) y=(format!("{y:.1}")) width=(format!("{bar_width:.1}")) height=(format!("{h:.1}")) fill=(fill) {}
                        }
                    }
                    @if i % label_every == 0 {
                        text x=(format!("{:.1}", x + bar_width / 2.0)) y=(HEIGHT - 6.0) font-size="11" text-anchor="middle" fill="#1b1b1b" { (label) }
                    }
                }
            }
            figcaption.legend {
                @for (name, class, _) in series {
                    span { span class=(format!("sw {class}")) {} (name) }
                }
            }
        }
    }
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.1}") }
}

/// A bar's coloured part: (y, height, fill).
type Segment<'a> = (f64, f64, &'a str);

/// One CSV field: quoted, and a leading `=`, `+`, `-`, `@` made inert so a
/// spreadsheet never runs a user-chosen value as a formula.
pub fn csv_field(value: &str) -> String {
    let inert = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) { "'" } else { "" };
    format!("\"{inert}{}\"", value.replace('"', "\"\""))
}

pub fn csv_row(fields: &[&str]) -> String {
    let mut line = fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(",");
    line.push_str("\r\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(csv_row(&["a\"b", "=1+1", "Zoë"]), "\"a\"\"b\",\"'=1+1\",\"Zoë\"\r\n");
    }

    #[test]
    fn ages_read_as_words() {
        assert_eq!(age(5), "5 s");
        assert_eq!(age(600), "10 min");
        assert_eq!(age(7200), "2 h");
        assert_eq!(age(3 * 86_400), "3 d");
    }
}
