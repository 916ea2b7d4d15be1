//! evlounge: EV lounge daemon. Data flows ingest → domain → outputs → http.

pub mod domain;
pub mod outputs;
pub mod sim;
pub mod util;
