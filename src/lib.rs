//! evlounge: EV lounge daemon. Data flows ingest → domain → outputs → http.

pub mod domain;
pub mod outputs;
pub mod util;
pub mod config;
pub mod ingest;
pub mod store;
pub mod app;
pub mod http;
pub mod cli;
