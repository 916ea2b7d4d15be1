pub mod notify;
pub mod timeseries;
