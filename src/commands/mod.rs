//! One module per subcommand that has no room of its own: parse → call the stages → result.
//! `top` and `dump` keep their own folders (model, render, terminal), and `main` dispatches.

pub mod bench;
pub mod diff;
pub mod monitor;
pub mod record;
pub mod report;
