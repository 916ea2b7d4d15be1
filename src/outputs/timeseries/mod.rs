pub mod point;
pub use point::Point;
