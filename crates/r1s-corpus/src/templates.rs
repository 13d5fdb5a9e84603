//! The content templates a reader sees as text, rendered instead of dropped.
//!
//! Most templates are layout, citations or navigation and the cleaner drops them, as wikiextractor
//! does. A few put facts in the sentence (`At {{convert|1300|mi|km}}, the state has…`): dropping them
//! leaves `At, the state has…`. [`render`] turns those into the text the page shows, in their simplest
//! form (the first value and unit of a conversion, a date without its age). A template whose parameters
//! hold another template is dropped, so rendering stays linear (each byte is read a bounded number of
//! times).
//!
//! Rendered (names compared lower-cased, `_` as space): `convert`/`cvt`, `nihongo`, `lang`,
//! `lang-xx`, `nowrap`/`nobr`, `circa`/`c.`, `start date`, `end date`, `birth date`, `death date`
//! (and their `… and age` forms), `frac`, `height`, `sortname`, `small`, `ill`, `as of`, `abbr`,
//! `mvar`, `em`, `ndash`, `mdash`, `blockquote`, `spaces`. Parameters may hold links and, within
//! bounds, other templates (cleaned in turn).

/// The names [`render`] handles (lower case).
pub const RENDERED: &[&str] = &[
    "convert",
    "cvt",
    "nihongo",
    "lang",
    "nowrap",
    "nobr",
    "circa",
    "c.",
    "start date",
    "end date",
    "birth date",
    "death date",
    "start date and age",
    "birth date and age",
    "death date and age",
    "frac",
    "height",
    "sortname",
    "small",
    "ill",
    "as of",
    "abbr",
    "mvar",
    "ndash",
    "mdash",
    "blockquote",
    "quote",
    "em",
    "spaces",
];

/// A content template holding other templates is rendered only when it is at most this long …
const MAX_NESTED_BYTES: usize = 4096;
/// … and holds at most this many `{{`.
const MAX_NESTED: usize = 8;

/// Unit codes of `{{convert}}` shown as the page shows them (the rest as written).
fn unit(code: &str) -> &str {
    match code {
        "C" => "°C",
        "F" => "°F",
        "K" => "K",
        "km2" => "km²",
        "m2" => "m²",
        "sqmi" => "sq mi",
        "sqft" => "sq ft",
        "sqkm" => "km²",
        "ha" => "ha",
        "acre" => "acres",
        "km/h" | "kph" => "km/h",
        "ftin" => "ft",
        "e3" => "thousand",
        "e6" => "million",
        "e9" => "billion",
        other => other,
    }
}

/// The name of a call [`render`] handles, normalised without allocating (`Convert` → `convert`,
/// `Start_date` → `start date`: the text up to `|`, ASCII-lower-cased, `_` and runs of whitespace as
/// one space, an optional `Template:` prefix dropped) in `buf`; `None` for every other template.
fn rendered_name<'b>(content: &[u8], buf: &'b mut [u8; 24]) -> Option<&'b str> {
    let end = memchr::memchr(b'|', content).unwrap_or(content.len());
    let raw = content[..end].trim_ascii();
    let raw = if raw.len() > 9 && raw[..9].eq_ignore_ascii_case(b"template:") { &raw[9..] } else { raw };
    if raw.is_empty() || raw.len() > buf.len() {
        return None;
    }
    let mut n = 0;
    let mut space = false;
    for &b in raw {
        if b == b'_' || b.is_ascii_whitespace() {
            space = n > 0;
            continue;
        }
        if space {
            buf[n] = b' ';
            n += 1;
            space = false;
        }
        if n == buf.len() {
            return None;
        }
        buf[n] = b.to_ascii_lowercase();
        n += 1;
    }
    // only ASCII bytes were changed or added: still UTF-8
    let name = std::str::from_utf8(&buf[..n]).ok()?;
    let known = RENDERED.contains(&name) || (name.starts_with("lang-") && !name.contains(':'));
    known.then_some(name)
}

/// The parameters of a template call (after its name), split at `|` outside `[[…]]`: positional
/// values in order, and `key=value` pairs.
struct Params<'a> {
    positional: Vec<String>,
    named: Vec<(&'a str, String)>,
}

fn params(content: &str) -> Params<'_> {
    let b = content.as_bytes();
    let mut parts = Vec::new();
    let (mut depth, mut start, mut i) = (0usize, 0usize, 0usize);
    while i < b.len() {
        if b[i..].starts_with(b"[[") || b[i..].starts_with(b"{{") {
            depth += 1;
            i += 2;
        } else if b[i..].starts_with(b"]]") || b[i..].starts_with(b"}}") {
            depth = depth.saturating_sub(1);
            i += 2;
        } else {
            if b[i] == b'|' && depth == 0 {
                parts.push(&content[start..i]);
                start = i + 1;
            }
            i += 1;
        }
    }
    parts.push(&content[start..]);
    let mut p = Params { positional: Vec::new(), named: Vec::new() };
    let mut numbered: Vec<(usize, String)> = Vec::new();
    for part in parts.into_iter().skip(1) {
        match part.split_once('=') {
            // `1=value`: an explicitly numbered positional parameter (it may hold `=`)
            Some((k, v)) if k.trim().parse::<usize>().is_ok_and(|n| (1..=64).contains(&n)) => {
                numbered.push((k.trim().parse::<usize>().unwrap_or(1) - 1, text(v)));
            }
            Some((k, v))
                if !k.is_empty()
                    && !k.contains("{{")
                    && k.trim().bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b' ' || c == b'-') =>
            {
                p.named.push((k.trim(), text(v)))
            }
            _ => p.positional.push(text(part)),
        }
    }
    for (slot, v) in numbered {
        if p.positional.len() <= slot {
            p.positional.resize(slot + 1, String::new());
        }
        p.positional[slot] = v;
    }
    p
}

/// A parameter value as plain text: links and formatting cleaned when present.
fn text(v: &str) -> String {
    let v = v.trim();
    if v.contains("[[") || v.contains("{{") || v.contains("''") || v.contains('<') || v.contains('&') {
        crate::wikitext::clean(v).replace('\n', " ").trim().to_owned()
    } else {
        v.to_owned()
    }
}

impl Params<'_> {
    fn pos(&self, k: usize) -> &str {
        self.positional.get(k).map_or("", String::as_str)
    }
    fn named(&self, key: &str) -> Option<&str> {
        self.named.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// `{{start date|1989|5|1}}` → `May 1, 1989` (`1 May 1989` with `df=y`); year only, year and month.
fn date(p: &Params<'_>) -> Option<String> {
    let year = p.pos(0);
    if year.is_empty() || !year.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let month = p.pos(1).parse::<usize>().ok().filter(|m| (1..=12).contains(m)).map(|m| MONTHS[m - 1]);
    let day = p.pos(2).parse::<u32>().ok().filter(|d| (1..=31).contains(d));
    let df = p.named("df").is_some_and(|v| matches!(v, "y" | "yes" | "Y"));
    Some(match (month, day) {
        (Some(m), Some(d)) if df => format!("{d} {m} {year}"),
        (Some(m), Some(d)) => format!("{m} {d}, {year}"),
        (Some(m), None) => format!("{m} {year}"),
        _ => year.to_owned(),
    })
}

/// The text the page shows for the template call `content` (what is between `{{` and `}}`), or
/// `None` to drop it.
pub fn render(content: &[u8]) -> Option<String> {
    // most templates (citations, infoboxes) are dropped: decide from the name alone, before any
    // parameter is parsed
    let mut buf = [0u8; 24];
    let name = rendered_name(content, &mut buf)?;
    // nested templates are cleaned (and rendered) with the parameters, within bounds that keep the
    // work linear: each byte is re-read at most once per enclosing rendered template, and at most
    // MAX_NESTED of those enclose it
    if memchr::memmem::find(content, b"{{").is_some()
        && (content.len() > MAX_NESTED_BYTES || memchr::memmem::find_iter(content, b"{{").count() > MAX_NESTED)
    {
        return None;
    }
    let s = std::str::from_utf8(content).ok()?;
    let p = params(s);
    let joined = |parts: &[&str]| parts.iter().filter(|x| !x.is_empty()).copied().collect::<Vec<_>>().join(" ");
    let out = match name {
        "convert" | "cvt" => {
            let range = matches!(p.pos(1), "to" | "and" | "-" | "–" | "or" | "by" | "x" | "×" | "to(-)" | "+/-" | "±");
            let is_number = |x: &str| !x.is_empty() && x.trim_start_matches(['-', '−', '+']).parse::<f64>().is_ok();
            if range {
                // a range: value to/and/-/… value unit
                joined(&[p.pos(0), p.pos(1), p.pos(2), unit(p.pos(3))])
            } else if is_number(p.pos(2)) && !p.pos(3).is_empty() {
                // several parts of one measure: 6 ft 3 in
                joined(&[p.pos(0), unit(p.pos(1)), p.pos(2), unit(p.pos(3))])
            } else {
                joined(&[p.pos(0), unit(p.pos(1))])
            }
        }
        "nihongo" => {
            let lit = (!p.pos(3).is_empty()).then(|| format!("lit. {}", p.pos(3)));
            let inner: Vec<&str> =
                [p.pos(1), p.pos(2), lit.as_deref().unwrap_or("")].into_iter().filter(|x| !x.is_empty()).collect();
            match (p.pos(0), inner.is_empty()) {
                ("", _) => inner.join(", "),
                (en, true) => en.to_owned(),
                (en, false) => format!("{en} ({})", inner.join(", ")),
            }
        }
        "lang" => p.named("text").unwrap_or(p.pos(1)).to_owned(),
        n if n.starts_with("lang-") => p.named("text").unwrap_or(p.pos(0)).to_owned(),
        "nowrap" | "nobr" | "small" | "ill" | "mvar" | "abbr" | "em" => p.pos(0).to_owned(),
        "circa" | "c." => {
            if p.pos(0).is_empty() {
                "c.".to_owned()
            } else {
                format!("c. {}", p.pos(0))
            }
        }
        "start date" | "end date" | "birth date" | "death date" | "start date and age" | "birth date and age"
        | "death date and age" => date(&p)?,
        "frac" => match (p.pos(0), p.pos(1), p.pos(2)) {
            (a, "", "") if !a.is_empty() => format!("1/{a}"),
            (a, b, "") => format!("{a}/{b}"),
            (a, b, c) => format!("{a} {b}/{c}"),
        },
        "height" => {
            let units = [("m", "m"), ("cm", "cm"), ("ft", "ft"), ("in", "in")];
            let parts: Vec<String> = units
                .iter()
                .filter_map(|(k, u)| p.named(k).filter(|v| !v.is_empty()).map(|v| format!("{v} {u}")))
                .collect();
            parts.join(" ")
        }
        "sortname" => joined(&[p.pos(0), p.pos(1)]),
        "as of" => {
            let lower = p.named("lc").is_some_and(|v| matches!(v, "y" | "yes" | "Y"));
            format!("{} {}", if lower { "as of" } else { "As of" }, date(&p)?)
        }
        "blockquote" | "quote" => p.named("text").or(p.named("quote")).unwrap_or(p.pos(0)).to_owned(),
        "spaces" => return Some(" ".to_owned()),
        "ndash" => "–".to_owned(),
        "mdash" => "—".to_owned(),
        _ => return None,
    };
    let out = out.trim().to_owned();
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Option<String> {
        render(s.as_bytes())
    }

    #[test]
    fn content_templates_render_as_the_page_shows_them() {
        assert_eq!(r("convert|1300|mi|km").as_deref(), Some("1300 mi"));
        assert_eq!(r("convert|93|m|ft").as_deref(), Some("93 m"));
        assert_eq!(r("Convert|5|to|10|km|abbr=on").as_deref(), Some("5 to 10 km"));
        assert_eq!(r("cvt|3.5|kg").as_deref(), Some("3.5 kg"));
        assert_eq!(
            r("nihongo|Tokyo Tower|東京タワー|Tōkyō tawā").as_deref(),
            Some("Tokyo Tower (東京タワー, Tōkyō tawā)")
        );
        assert_eq!(r("lang|fr|la belle époque").as_deref(), Some("la belle époque"));
        assert_eq!(r("lang-de|Reich").as_deref(), Some("Reich"));
        assert_eq!(r("nowrap|10 000 km").as_deref(), Some("10 000 km"));
        assert_eq!(r("circa|1989").as_deref(), Some("c. 1989"));
        assert_eq!(r("start date|1989|5|1").as_deref(), Some("May 1, 1989"));
        assert_eq!(r("Start_date|1989|5|1|df=y").as_deref(), Some("1 May 1989"));
        assert_eq!(r("birth date and age|1961|8|4").as_deref(), Some("August 4, 1961"));
        assert_eq!(r("start date|1989").as_deref(), Some("1989"));
        assert_eq!(r("frac|1|2").as_deref(), Some("1/2"));
        assert_eq!(r("frac|3|1|2").as_deref(), Some("3 1/2"));
        assert_eq!(r("height|m=1.85").as_deref(), Some("1.85 m"));
        assert_eq!(r("height|ft=6|in=1").as_deref(), Some("6 ft 1 in"));
        assert_eq!(r("sortname|John|Smith").as_deref(), Some("John Smith"));
        assert_eq!(r("nowrap|[[Paris|the capital]] of France").as_deref(), Some("the capital of France"));
        assert_eq!(r("blockquote|text=To be, or not to be|author=Shakespeare").as_deref(), Some("To be, or not to be"));
        assert_eq!(r("spaces").as_deref(), Some(" "));
        // not content: dropped
        assert_eq!(r("cite web|url=x|title=y"), None);
        assert_eq!(r("Infobox country|name=X"), None);
        assert_eq!(r("#if:x|y"), None);
        // nested templates are cleaned with the parameters (dropped or rendered in turn)
        assert_eq!(r("nowrap|{{convert|5|km}}").as_deref(), Some("5 km"));
        assert_eq!(r("lang|fr|je ne sais {{em|quoi}}").as_deref(), Some("je ne sais quoi"));
        assert_eq!(r("lang|fr|je ne sais {{sfn|X}}").as_deref(), Some("je ne sais"));
        assert_eq!(r("blockquote|To be.<ref>{{cite book|x}}</ref>|Shakespeare").as_deref(), Some("To be."));
        assert_eq!(r(&format!("nowrap|{}", "{{x}}".repeat(9))), None);
        // numbered and named text parameters
        assert_eq!(r("nowrap|1=a=b").as_deref(), Some("a=b"));
        assert_eq!(r("convert|1=324|2=m|3=ft").as_deref(), Some("324 m"));
        assert_eq!(r("lang|fr|text=je ne sais quoi").as_deref(), Some("je ne sais quoi"));
        // several parts of a measure, unit symbols, literal meanings, lower case
        assert_eq!(r("convert|6|ft|3|in|m").as_deref(), Some("6 ft 3 in"));
        assert_eq!(r("convert|-40|C|F").as_deref(), Some("-40 °C"));
        assert_eq!(r("convert|14|e6|acre").as_deref(), Some("14 million"));
        assert_eq!(
            r("nihongo|Tokyo|東京|Tōkyō|eastern capital").as_deref(),
            Some("Tokyo (東京, Tōkyō, lit. eastern capital)")
        );
        assert_eq!(r("as of|2020|lc=y").as_deref(), Some("as of 2020"));
        assert_eq!(r("lang|fr|"), None);
    }
}
