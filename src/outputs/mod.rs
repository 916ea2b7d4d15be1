//! Outputs, each owning its resource: MQTT out, time series, notifications.

pub mod mqtt_out;
pub mod notify;
pub mod timeseries;
