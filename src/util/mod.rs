pub mod secret;
pub mod time;
