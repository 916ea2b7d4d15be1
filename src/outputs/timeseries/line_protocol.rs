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
    let mut line = Line::new(buf, p.measurement);
    for (k, v) in &p.tags {
        line.tag(k, v);
    }
    for (k, v) in &p.fields {
        line.field(k, Some(*v));
    }
    line.finish(p.ts_ms)
}

/// One line written in place: measurement, then tags, then fields, then [`Line::finish`].
/// The hot path (a telemetry message) encodes its point this way without building a
/// [`Point`]. A line that ends up with no finite field is taken back out of the buffer.
pub struct Line<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
    fields: usize,
    no_measurement: bool,
}

impl<'a> Line<'a> {
    pub fn new(buf: &'a mut Vec<u8>, measurement: &str) -> Self {
        let start = buf.len();
        escape(measurement.as_bytes(), buf, Kind::Measurement);
        Line {
            buf,
            start,
            fields: 0,
            no_measurement: measurement.is_empty(),
        }
    }

    /// InfluxDB rejects empty tag keys and values; an absent tag means the same thing.
    pub fn tag(&mut self, k: &str, v: &str) -> &mut Self {
        debug_assert_eq!(self.fields, 0, "tags go before fields");
        if !k.is_empty() && !v.is_empty() {
            self.buf.push(b',');
            escape(k.as_bytes(), self.buf, Kind::Key);
            self.buf.push(b'=');
            escape(v.as_bytes(), self.buf, Kind::Key);
        }
        self
    }

    /// A field when the value is known and finite.
    pub fn field(&mut self, k: &str, v: Option<f64>) -> &mut Self {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            if !k.is_empty() {
                self.buf.push(if self.fields == 0 { b' ' } else { b',' });
                self.fields += 1;
                escape(k.as_bytes(), self.buf, Kind::Key);
                self.buf.push(b'=');
                write_float(v, self.buf);
            }
        }
        self
    }

    /// Ends the line at `ts_ms`; false (and nothing left written) when it had no field or
    /// no measurement.
    pub fn finish(self, ts_ms: i64) -> bool {
        if self.fields == 0 || self.no_measurement {
            self.buf.truncate(self.start);
            return false;
        }
        self.buf.push(b' ');
        let mut b = itoa::Buffer::new();
        self.buf.extend_from_slice(b.format(ts_ms).as_bytes());
        self.buf.push(b'\n');
        true
    }
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
    fn a_line_written_in_place_is_taken_back_without_fields() {
        let mut buf = b"m f=1 1\n".to_vec();
        let mut l = Line::new(&mut buf, "charger");
        l.tag("site", "s 1")
            .field("power_kw", None)
            .field("soc", Some(f64::NAN));
        assert!(!l.finish(2));
        assert_eq!(buf, b"m f=1 1\n");
        let mut l = Line::new(&mut buf, "");
        l.field("f", Some(1.0));
        assert!(!l.finish(3));
        assert_eq!(buf, b"m f=1 1\n");
        let mut l = Line::new(&mut buf, "charger");
        l.tag("site", "s 1")
            .tag("status", "")
            .field("power_kw", None)
            .field("soc_pct", Some(61.0))
            .field("kwh", Some(0.5));
        assert!(l.finish(4));
        assert_eq!(buf, b"m f=1 1\ncharger,site=s\\ 1 soc_pct=61,kwh=0.5 4\n");
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
