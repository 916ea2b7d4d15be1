//! evlounge: EV lounge daemon. Data flows ingest → domain → outputs → http.

pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod domain;
pub mod http;
pub mod ingest;
pub mod outputs;
pub mod sim;
pub mod store;
pub mod util;
