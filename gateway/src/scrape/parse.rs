//! A small parser for the Prometheus text exposition format (0.0.4, plus OpenMetrics' `# EOF` and exemplars).
//!
//! Written in-house because the common `prometheus-parse` crate silently drops names with a colon, i.e. every
//! `vllm:` metric. It reads only what the scraper needs: sample name, labels, value and optional timestamp;
//! `# HELP`/`# TYPE` and other comments are skipped, and a malformed line is counted and skipped rather than
//! failing the whole scrape.

use std::borrow::Cow;

/// One sample line, borrowing from the scraped text where no unescaping was needed.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    pub value: f64,
    /// As written: milliseconds in 0.0.4, seconds in OpenMetrics.
    pub timestamp: Option<f64>,
}

/// The samples of one exposition and how many lines could not be parsed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed<'a> {
    pub samples: Vec<Sample<'a>>,
    pub n_invalid_lines: usize,
}

impl Sample<'_> {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_ref())
    }
}

/// Parses an exposition; never fails as a whole.
pub fn parse(text: &str) -> Parsed<'_> {
    let mut parsed = Parsed::default();
    for line in text.lines() {
        let line = line.trim_matches([' ', '\t', '\r']);
        if line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            if line == "# EOF" {
                break;
            }
            continue;
        }
        match parse_line(line) {
            Some(sample) => parsed.samples.push(sample),
            None => parsed.n_invalid_lines += 1,
        }
    }
    parsed
}

fn parse_line(line: &str) -> Option<Sample<'_>> {
    let name_len = line
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())))
        .map_or(line.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let (name, mut rest) = line.split_at(name_len);
    rest = rest.trim_start_matches([' ', '\t']);

    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }

    let mut fields = rest.split_ascii_whitespace();
    let value = parse_float(fields.next()?)?;
    let timestamp = match fields.next() {
        None => None,
        // An OpenMetrics exemplar follows a `#`; it is not part of the sample.
        Some(field) if field.starts_with('#') => None,
        Some(field) => {
            let timestamp = parse_float(field)?;
            if fields.next().is_some_and(|extra| !extra.starts_with('#')) {
                return None;
            }
            Some(timestamp)
        }
    };
    Some(Sample { name, labels, value, timestamp })
}

/// Parses `name="value",...}` and returns the text after the closing brace.
fn parse_labels<'a>(mut rest: &'a str, labels: &mut Vec<(&'a str, Cow<'a, str>)>) -> Option<&'a str> {
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some(after);
        }
        let name_len = rest
            .char_indices()
            .find(|&(i, c)| !(c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit())))
            .map_or(rest.len(), |(i, _)| i);
        if name_len == 0 {
            return None;
        }
        let (name, after_name) = rest.split_at(name_len);
        let after_eq = after_name.trim_start_matches([' ', '\t']).strip_prefix('=')?;
        let quoted = after_eq.trim_start_matches([' ', '\t']).strip_prefix('"')?;
        let (value, after_value) = parse_quoted(quoted)?;
        labels.push((name, value));
        rest = after_value.trim_start_matches([' ', '\t']);
        // A trailing comma before `}` is allowed by the format.
        if let Some(after_comma) = rest.strip_prefix(',') {
            rest = after_comma;
        } else if !rest.starts_with('}') {
            return None;
        }
    }
}

/// Reads a label value up to its closing quote, unescaping `\\`, `\"` and `\n`.
fn parse_quoted(text: &str) -> Option<(Cow<'_, str>, &str)> {
    let bytes = text.as_bytes();
    let end = bytes.iter().position(|b| *b == b'"' || *b == b'\\')?;
    if bytes[end] == b'"' {
        return Some((Cow::Borrowed(&text[..end]), &text[end + 1..]));
    }
    let mut value = String::from(&text[..end]);
    let mut chars = text[end..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((Cow::Owned(value), &text[end + i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                // `\\` and `\"`; anything else is kept as written, as Prometheus does.
                '\\' => value.push('\\'),
                '"' => value.push('"'),
                other => {
                    value.push('\\');
                    value.push(other);
                }
            },
            c => value.push(c),
        }
    }
    None
}

/// Go's `strconv.ParseFloat` spellings: `NaN`, `+Inf`, `-Inf`, exponents; Rust accepts the same set.
fn parse_float(text: &str) -> Option<f64> {
    text.parse().ok()
}

#[cfg(test)]
mod tests;
