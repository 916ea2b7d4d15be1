//! PLACEHOLDER (replaced by the domain implementation).
