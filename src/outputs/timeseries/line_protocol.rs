//! InfluxDB line protocol encoding (v2 write API, `precision=ms`).
//!
//! Escaping follows the v2 reference: measurement escapes `,` and space; tag keys, tag
//! values and field keys escape `,`, `=` and space. Backslashes are doubled so a value
//! ending in `\` cannot escape the delimiter that follows it. Line protocol has no escape
//! for newlines, so CR/LF inside names or tag values become escaped spaces: a stray
//! newline would otherwise split one point into two malformed lines.
//!
//! Fields are always written as floats (no `i` suffix): a store that saw `power_kw=0i`
//! once would reject `power_kw=1.5` forever after (field type conflict).

use std::io::Write;

use super::Point;

/// Appends `points` to `buf` as line protocol, one `\n`-terminated line per point with at
/// least one finite field. Returns the number of lines written. `buf` is not cleared, so
/// a caller can reuse one allocation across batches.
pub fn encode(points: &[Point], buf: &mut Vec<u8>) -> usize {
    let mut lines = 0;
    for p in points {
        if encode_point(p, buf) {
            lines += 1;
        }
    }
    lines
}

/// Writes one point; returns false (and writes nothing) when it has no finite field.
pub fn encode_point(p: &Point, buf: &mut Vec<u8>) -> bool {
    // `Point::field` already filters non-finite values, but the fields are public.
    if !p.fields.iter().any(|(_, v)| v.is_finite()) || p.measurement.is_empty() {
        return false;
    }
    escape(p.measurement.as_bytes(), buf, Kind::Measurement);
    for (k, v) in &p.tags {
        // InfluxDB rejects empty tag keys/values; an absent tag means the same thing.
        if k.is_empty() || v.is_empty() {
            continue;
        }
        buf.push(b',');
        escape(k.as_bytes(), buf, Kind::Key);
        buf.push(b'=');
        escape(v.as_bytes(), buf, Kind::Key);
    }
    let mut sep = b' ';
    for (k, v) in &p.fields {
        if !v.is_finite() || k.is_empty() {
            continue;
        }
        buf.push(sep);
        sep = b',';
        escape(k.as_bytes(), buf, Kind::Key);
        buf.push(b'=');
        write_float(*v, buf);
    }
    buf.push(b' ');
    // Writing into a Vec cannot fail.
    let _ = write!(buf, "{}", p.ts_ms);
    buf.push(b'\n');
    true
}

#[derive(Clone, Copy)]
enum Kind {
    Measurement,
    /// Tag keys, tag values and field keys share one escaping rule.
    Key,
}

fn escape(s: &[u8], buf: &mut Vec<u8>, kind: Kind) {
    // Fast path: almost every name and tag value is plain.
    if !s
        .iter()
        .any(|b| matches!(b, b',' | b' ' | b'=' | b'\\' | b'\n' | b'\r'))
    {
        buf.extend_from_slice(s);
        return;
    }
    for &b in s {
        match b {
            b',' | b' ' | b'\\' => {
                buf.push(b'\\');
                buf.push(b);
            }
            b'=' => {
                if let Kind::Key = kind {
                    buf.push(b'\\');
                }
                buf.push(b'=');
            }
            b'\n' | b'\r' => buf.extend_from_slice(b"\\ "),
            _ => buf.push(b),
        }
    }
}

fn write_float(v: f64, buf: &mut Vec<u8>) {
    // The shortest string that round-trips, never in exponent form; an integral value
    // prints as `3` or `3.0`, which line protocol reads as a float (no `i`). ryu is several
    // times faster than `{}` but switches to exponent form outside 1e-5..1e16, where `{}`
    // (plain digits) takes over.
    let a = v.abs();
    if v == 0.0 || (1e-5..1e15).contains(&a) {
        let mut b = ryu::Buffer::new();
        let s = b.format_finite(v);
        // `61.0` as `61`, as `{}` writes it: shorter, and the same bytes as before.
        buf.extend_from_slice(s.strip_suffix(".0").unwrap_or(s).as_bytes());
    } else {
        let _ = write!(buf, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_never_use_exponent_form_and_round_trip() {
        for v in [
            0.0,
            -0.0,
            3.0,
            0.1,
            1.5,
            -2.25,
            123.456,
            1e-5,
            9.99e-6,
            1e-7,
            1e14,
            1e15,
            1e16,
            6.02e23,
            -1e20,
            0.30000000000000004,
            47.123456789,
        ] {
            let mut buf = Vec::new();
            write_float(v, &mut buf);
            let s = String::from_utf8(buf).unwrap();
            assert!(!s.contains(['e', 'E']), "{v} -> {s}");
            assert_eq!(s.parse::<f64>().unwrap(), v, "{s} round-trips");
        }
    }

    fn enc(p: &Point) -> String {
        let mut buf = Vec::new();
        encode(std::slice::from_ref(p), &mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn plain_point() {
        let p = Point::new("charger", 1_795_547_378_380)
            .tag("site", "milano")
            .tag("charger", "hpc-3")
            .field("power_kw", Some(148.2))
            .field("soc_pct", Some(61.0));
        assert_eq!(
            enc(&p),
            "charger,site=milano,charger=hpc-3 power_kw=148.2,soc_pct=61 1795547378380\n"
        );
    }

    #[test]
    fn escapes_measurement_tags_and_fields() {
        let p = Point {
            measurement: "my meas,x=y",
            tags: vec![("t k", "a,b=c d".into()), ("b\\", "ends\\".into())],
            fields: vec![("f=1 x,", 1.5)],
            ts_ms: 7,
        };
        assert_eq!(
            enc(&p),
            r"my\ meas\,x=y,t\ k=a\,b\=c\ d,b\\=ends\\ f\=1\ x\,=1.5 7".to_string() + "\n"
        );
    }

    #[test]
    fn newlines_cannot_split_a_line() {
        let p = Point::new("m", 1).tag("t", "a\nb\r").field("f", Some(1.0));
        let s = enc(&p);
        assert_eq!(s, "m,t=a\\ b\\  f=1 1\n");
        assert_eq!(s.matches('\n').count(), 1);
    }

    #[test]
    fn empty_tags_are_omitted() {
        let p = Point::new("m", 1)
            .tag("a", "")
            .tag("b", "x")
            .field("f", Some(2.0));
        assert_eq!(enc(&p), "m,b=x f=2 1\n");
    }

    #[test]
    fn points_without_fields_are_skipped() {
        let points = vec![
            Point::new("m", 1).tag("a", "b").field("f", None),
            Point {
                measurement: "m",
                tags: vec![],
                fields: vec![("nan", f64::NAN), ("inf", f64::INFINITY)],
                ts_ms: 2,
            },
            Point::new("m", 3).field("f", Some(-0.5)),
        ];
        let mut buf = b"prefix\n".to_vec();
        assert_eq!(encode(&points, &mut buf), 1);
        assert_eq!(buf, b"prefix\nm f=-0.5 3\n");
    }

    #[test]
    fn non_finite_fields_are_dropped_from_a_valid_point() {
        let p = Point {
            measurement: "m",
            tags: vec![],
            fields: vec![("a", f64::NAN), ("b", 4.25)],
            ts_ms: -5,
        };
        assert_eq!(enc(&p), "m b=4.25 -5\n");
    }

    #[test]
    fn floats_round_trip_and_never_carry_int_suffix() {
        for v in [
            0.0,
            1.0,
            1e21,
            1e-7,
            123456.789,
            f64::MAX,
            f64::MIN_POSITIVE,
        ] {
            let p = Point::new("m", 0).field("f", Some(v));
            let s = enc(&p);
            let num = s
                .trim_end()
                .split(' ')
                .nth(1)
                .unwrap()
                .strip_prefix("f=")
                .unwrap();
            assert!(!num.ends_with('i'), "{num}");
            assert_eq!(num.parse::<f64>().unwrap(), v);
        }
    }
}
