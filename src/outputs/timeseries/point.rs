//! A time-series point (CONTRACT §8): numeric fields only, millisecond timestamps.

/// One point. Tags and fields keep insertion order; field values are always floats so no
/// store sees an int/float type conflict across writes.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub measurement: &'static str,
    pub tags: Vec<(&'static str, String)>,
    pub fields: Vec<(&'static str, f64)>,
    /// ms since epoch, from the message clock.
    pub ts_ms: i64,
}

impl Point {
    pub fn new(measurement: &'static str, ts_ms: i64) -> Self {
        Point {
            measurement,
            tags: Vec::new(),
            fields: Vec::new(),
            ts_ms,
        }
    }

    /// A point with room for `tags` tags and `fields` fields (no regrowth on the hot path).
    pub fn with_capacity(
        measurement: &'static str,
        ts_ms: i64,
        tags: usize,
        fields: usize,
    ) -> Self {
        Point {
            measurement,
            tags: Vec::with_capacity(tags),
            fields: Vec::with_capacity(fields),
            ts_ms,
        }
    }

    pub fn tag(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.tags.push((k, v.into()));
        self
    }

    /// Adds a field when the value is known and finite.
    pub fn field(mut self, k: &'static str, v: Option<f64>) -> Self {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.fields.push((k, v));
        }
        self
    }
}
