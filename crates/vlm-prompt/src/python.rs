//! Python semantics that chat templates rely on: `json.dumps`, `str()` of values and
//! `datetime.strftime`.
//!
//! Templates are written against Jinja2 running in Python, so a value printed with `{{ x }}` is
//! `str(x)` (`None`, `True`, `['a', 'b']`) and transformers' `tojson` filter is `json.dumps` with
//! `ensure_ascii=False` (spaces after `,` and `:`, no HTML escaping). minijinja's defaults differ
//! (`none`, `true`, compact HTML-safe JSON), and a single differing byte changes the token ids the
//! model sees.

use std::fmt::Write as _;

use minijinja::value::ValueKind;
use minijinja::{Error, ErrorKind, Value};

/// Options of Python's `json.dumps` that transformers' `tojson` exposes.
#[derive(Debug, Clone, Default)]
pub(crate) struct JsonOptions {
    pub ensure_ascii: bool,
    /// `None`: single line. `Some(s)`: newline, then `s` repeated per nesting level.
    pub indent: Option<String>,
    pub item_separator: Option<String>,
    pub key_separator: Option<String>,
    pub sort_keys: bool,
}

/// `json.dumps(value, **options)`.
pub(crate) fn json_dumps(value: &Value, options: &JsonOptions) -> Result<String, Error> {
    let mut out = String::new();
    let item_sep = options
        .item_separator
        .clone()
        .unwrap_or_else(|| if options.indent.is_some() { "," } else { ", " }.to_string());
    let key_sep = options
        .key_separator
        .clone()
        .unwrap_or_else(|| ": ".to_string());
    let writer = JsonWriter {
        options,
        item_sep: &item_sep,
        key_sep: &key_sep,
    };
    writer.write(&mut out, value, 0)?;
    Ok(out)
}

struct JsonWriter<'a> {
    options: &'a JsonOptions,
    item_sep: &'a str,
    key_sep: &'a str,
}

impl JsonWriter<'_> {
    fn newline(&self, out: &mut String, depth: usize) {
        if let Some(indent) = &self.options.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(indent);
            }
        }
    }

    fn write(&self, out: &mut String, value: &Value, depth: usize) -> Result<(), Error> {
        match value.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&json_number(value)?),
            ValueKind::String => write_json_string(
                out,
                value.as_str().unwrap_or_default(),
                self.options.ensure_ascii,
            ),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(self.item_sep);
                    }
                    self.newline(out, depth + 1);
                    self.write(out, item, depth + 1)?;
                }
                self.newline(out, depth);
                out.push(']');
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    entries.push((json_key(&key)?, item));
                }
                if self.options.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                if entries.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                out.push('{');
                for (i, (key, item)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(self.item_sep);
                    }
                    self.newline(out, depth + 1);
                    write_json_string(out, key, self.options.ensure_ascii);
                    out.push_str(self.key_sep);
                    self.write(out, item, depth + 1)?;
                }
                self.newline(out, depth);
                out.push('}');
            }
            kind => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: expected a JSON-serializable value, found {kind} `{value}`"),
                ))
            }
        }
        Ok(())
    }
}

/// A dict key as `json.dumps` converts it: strings as-is, numbers, booleans and None spelled out.
fn json_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::None => Ok("null".to_string()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_string()),
        ValueKind::Number => json_number(key),
        kind => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: expected a string, number, bool or None key, found {kind} `{key}`"),
        )),
    }
}

fn json_number(value: &Value) -> Result<String, Error> {
    if value.is_integer() {
        return Ok(value.to_string());
    }
    let f = f64::try_from(value.clone())?;
    Ok(if f.is_nan() {
        "NaN".to_string()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
    } else {
        float_repr(f)
    })
}

fn write_json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, scientific notation outside
/// `1e-4 <= |x| < 1e16`, always a `.0` on integral values.
pub(crate) fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.to_string();
    }
    let sci = format!("{f:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if (-4..16).contains(&exponent) {
        let fixed = format!("{f}");
        if fixed.contains('.') {
            fixed
        } else {
            format!("{fixed}.0")
        }
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.abs())
    }
}

/// Python's `str(value)` for the values Jinja2 prints differently from minijinja, or `None` to
/// use minijinja's own formatting (strings, integers, undefined, objects).
pub(crate) fn python_str(value: &Value) -> Option<String> {
    match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Seq | ValueKind::Map => Some(repr(value)),
        ValueKind::Number if !value.is_integer() => Some(repr(value)),
        _ => None,
    }
}

/// Python's `repr(value)` for JSON-like values.
fn repr(value: &Value) -> String {
    match value.kind() {
        ValueKind::None => "None".to_string(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.to_string(),
        ValueKind::Number if value.is_integer() => value.to_string(),
        ValueKind::Number => f64::try_from(value.clone())
            .map(float_repr)
            .unwrap_or_else(|_| value.to_string()),
        ValueKind::String => string_repr(value.as_str().unwrap_or_default()),
        ValueKind::Seq => match value.try_iter() {
            Ok(items) => format!(
                "[{}]",
                items.map(|v| repr(&v)).collect::<Vec<_>>().join(", ")
            ),
            Err(_) => value.to_string(),
        },
        ValueKind::Map => match value.try_iter() {
            Ok(keys) => {
                let entries: Vec<String> = keys
                    .map(|k| {
                        let v = value.get_item(&k).unwrap_or_default();
                        format!("{}: {}", repr(&k), repr(&v))
                    })
                    .collect();
                format!("{{{}}}", entries.join(", "))
            }
            Err(_) => value.to_string(),
        },
        _ => value.to_string(),
    }
}

/// Python's `repr(str)`: single quotes unless the text has a `'` and no `"`.
fn string_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// `datetime.strftime(format)` for a UTC timestamp in seconds since the Unix epoch.
///
/// Supports the directives chat templates use (`%Y %y %m %B %b %d %e %j %A %a %H %I %M %S %p %%`)
/// and glibc's `-` flag (`%-d`) that removes padding. Unknown directives are kept verbatim.
pub(crate) fn strftime(format: &str, unix_seconds: i64) -> String {
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
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    // 1970-01-01 was a Thursday (index 3 with Monday = 0).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let year_day = days - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTHS[(month as usize).saturating_sub(1) % 12];

    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let num = |n: i64, width: usize| {
            if no_pad {
                n.to_string()
            } else {
                format!("{n:0width$}")
            }
        };
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&num(year.rem_euclid(100), 2)),
            Some('m') => out.push_str(&num(month, 2)),
            Some('d') => out.push_str(&num(day, 2)),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('j') => out.push_str(&num(year_day, 3)),
            Some('H') => out.push_str(&num(hour, 2)),
            Some('I') => out.push_str(&num((hour + 11) % 12 + 1, 2)),
            Some('M') => out.push_str(&num(minute, 2)),
            Some('S') => out.push_str(&num(second, 2)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(month_name),
            Some('b') | Some('h') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        // python3 -c "print([repr(x) for x in [1.0, 0.1, 1e16, 1.5e-5, 123.456, 1e-4, -2.5e20]])"
        let got: Vec<String> = [1.0, 0.1, 1e16, 1.5e-5, 123.456, 1e-4, -2.5e20]
            .into_iter()
            .map(float_repr)
            .collect();
        assert_eq!(
            got,
            ["1.0", "0.1", "1e+16", "1.5e-05", "123.456", "0.0001", "-2.5e+20"]
        );
    }

    #[test]
    fn strftime_matches_python() {
        // python3 -c "import datetime as d; print(d.datetime.fromtimestamp(1709251199,
        //   d.timezone.utc).strftime('%Y-%m-%d %H:%M:%S %A %a %B %b %j %I%p %y'))"
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %A %a %B %b %j %I%p %y", 1_709_251_199),
            "2024-02-29 23:59:59 Thursday Thu February Feb 060 11PM 24"
        );
        assert_eq!(strftime("%-d %B %Y %%", 0), "1 January 1970 %");
    }

    #[test]
    fn python_str_of_values() {
        let v = Value::from_serialize(serde_json::json!([1, 2.5, null, true, "it's", {"a": "b"}]));
        assert_eq!(
            python_str(&v).as_deref(),
            Some("[1, 2.5, None, True, \"it's\", {'a': 'b'}]")
        );
    }

    #[test]
    fn json_dumps_matches_python() {
        // python3 -c "import json; print(json.dumps({'b': [1, 2.0, None], 'a': 'é<&>\n'},
        //   ensure_ascii=False)); print(json.dumps({'b': [], 'a': {'c': True}}, indent=2,
        //   sort_keys=True)); print(json.dumps('é😀', ensure_ascii=True))"
        let v = Value::from_serialize(serde_json::json!({"b": [1, 2.0, null], "a": "é<&>\n"}));
        assert_eq!(
            json_dumps(&v, &JsonOptions::default()).ok().as_deref(),
            Some(r#"{"b": [1, 2.0, null], "a": "é<&>\n"}"#)
        );
        let v = Value::from_serialize(serde_json::json!({"b": [], "a": {"c": true}}));
        let options = JsonOptions {
            indent: Some("  ".into()),
            sort_keys: true,
            ..JsonOptions::default()
        };
        assert_eq!(
            json_dumps(&v, &options).ok().as_deref(),
            Some("{\n  \"a\": {\n    \"c\": true\n  },\n  \"b\": []\n}")
        );
        let options = JsonOptions {
            ensure_ascii: true,
            ..JsonOptions::default()
        };
        assert_eq!(
            json_dumps(&Value::from("é😀"), &options).ok().as_deref(),
            Some(r#""\u00e9\ud83d\ude00""#)
        );
    }
}
