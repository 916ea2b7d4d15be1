pub mod backoff;
pub mod secret;
pub mod time;
