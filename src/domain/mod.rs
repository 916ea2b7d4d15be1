//! Pure decision logic: `(state, input, now) -> (state, effects)`. No I/O, no clock reads.

pub mod charger;
pub mod eta;
pub mod event;
pub mod input;
pub mod lounge;
pub mod session;
pub mod thresholds;
