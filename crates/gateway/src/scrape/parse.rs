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
    Some(Sample {
        name,
        labels,
        value,
        timestamp,
    })
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
mod tests {
    use super::*;

    const VLLM_0_7: &str = include_str!("fixtures/vllm-0.7.txt");

    fn labels<'a>(sample: &'a Sample<'_>) -> Vec<(&'a str, &'a str)> {
        sample.labels.iter().map(|(n, v)| (*n, v.as_ref())).collect()
    }

    #[test]
    fn vllm_exposition_parses_completely() {
        let parsed = parse(VLLM_0_7);
        assert_eq!(parsed.n_invalid_lines, 0);
        assert_eq!(parsed.samples.len(), 34);

        let waiting: Vec<_> = parsed
            .samples
            .iter()
            .filter(|s| s.name == "vllm:num_requests_waiting")
            .collect();
        assert_eq!(waiting.len(), 1);
        assert_eq!(waiting[0].value, 3.0);
        assert_eq!(labels(waiting[0]), [("model_name", "qwq-32b")]);

        let cache = parsed
            .samples
            .iter()
            .find(|s| s.name == "vllm:cache_config_info")
            .unwrap();
        assert_eq!(cache.label("block_size"), Some("16"));
        assert_eq!(cache.label("num_gpu_blocks"), Some("2193"));
        assert_eq!(cache.labels.len(), 12);

        let lora: Vec<_> = parsed
            .samples
            .iter()
            .filter(|s| s.name == "vllm:lora_requests_info")
            .collect();
        assert_eq!(lora.len(), 4);
        assert_eq!(lora[1].label("running_lora_adapters"), Some("sql-lora,tweet-lora"));
        assert_eq!(lora[1].value, 1.738560125001e9);

        let inf_bucket = parsed
            .samples
            .iter()
            .find(|s| s.name == "vllm:time_to_first_token_seconds_bucket" && s.label("le") == Some("+Inf"))
            .unwrap();
        assert_eq!(inf_bucket.value, 2048.0);
        let acceptance = parsed
            .samples
            .iter()
            .find(|s| s.name == "vllm:spec_decode_draft_acceptance_rate")
            .unwrap();
        assert!(acceptance.value.is_nan());
        let no_labels = parsed
            .samples
            .iter()
            .find(|s| s.name == "process_start_time_seconds")
            .unwrap();
        assert!(no_labels.labels.is_empty());
        assert_eq!(no_labels.value, 1.73855e9);
    }

    #[test]
    fn label_values_unescape_and_keep_commas() {
        let text = r#"m{a="say \"hi\"",b="back\\slash",c="two\nlines",d="x,y , z",e="{}=#"} 1"#;
        let parsed = parse(text);
        assert_eq!(parsed.n_invalid_lines, 0);
        assert_eq!(
            labels(&parsed.samples[0]),
            [
                ("a", "say \"hi\""),
                ("b", "back\\slash"),
                ("c", "two\nlines"),
                ("d", "x,y , z"),
                ("e", "{}=#")
            ]
        );
    }

    #[test]
    fn values_and_timestamps_in_every_spelling() {
        let text = "a 1.5e-3\nb +Inf\nc -Inf\nd NaN\ne 42 1700000000000\nf{x=\"1\",} -7\ng 3 # {trace_id=\"abc\"} 1\n";
        let parsed = parse(text);
        assert_eq!(parsed.n_invalid_lines, 0);
        let values: Vec<f64> = parsed.samples.iter().map(|s| s.value).collect();
        assert_eq!(values[0], 1.5e-3);
        assert_eq!(values[1], f64::INFINITY);
        assert_eq!(values[2], f64::NEG_INFINITY);
        assert!(values[3].is_nan());
        assert_eq!(values[4..], [42.0, -7.0, 3.0]);
        assert_eq!(parsed.samples[4].timestamp, Some(1.7e12));
        assert_eq!(parsed.samples[5].label("x"), Some("1"));
        assert_eq!(parsed.samples[6].timestamp, None);
    }

    #[test]
    fn garbage_lines_are_counted_and_skipped() {
        let text = "\
good_before 1
this is not a metric
{orphan=\"labels\"} 1
bad_value abc
unclosed{a=\"x} 1
no_equals{a} 1
unquoted{a=x} 1
9starts_with_digit 1
too_many 1 2 3
missing_value
good_after{a=\"b\"} 2
";
        let parsed = parse(text);
        let names: Vec<&str> = parsed.samples.iter().map(|s| s.name).collect();
        assert_eq!(names, ["good_before", "good_after"]);
        assert_eq!(parsed.n_invalid_lines, 9);
    }

    #[test]
    fn openmetrics_eof_ends_the_exposition() {
        let parsed = parse("# TYPE a gauge\na 1\n# EOF\nb 2\n");
        assert_eq!(parsed.samples.len(), 1);
        assert_eq!(parsed.samples[0].name, "a");
    }

    #[test]
    fn crlf_and_indentation_are_tolerated() {
        let parsed = parse("  vllm:num_requests_waiting 4\r\n\tvllm:num_requests_running{a=\"b\"}\t5\r\n");
        assert_eq!(parsed.n_invalid_lines, 0);
        assert_eq!(parsed.samples.iter().map(|s| s.value).collect::<Vec<_>>(), [4.0, 5.0]);
    }
}
