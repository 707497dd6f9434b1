//! Outputs, one module per format: the flame graph, speedscope, pprof, Perfetto, the episodes
//! log, the human summary; the labeled stack samples the timeline formats share; and `target`,
//! which decides where loopspy may write and how (whole files, devices, pipes, stdout), shared
//! by every command.

pub mod episodes;
pub mod escape;
pub mod flamegraph;
pub mod labeled;
pub mod perfetto;
pub mod pprof;
pub mod speedscope;
pub mod summary;
pub mod target;

use crate::episode::Episode;

/// The route template of the HTTP request an episode served (`/orders/{order_id}`), when the
/// episode carries one. Bounded: a template, never a concrete path.
pub fn route_of(episode: &Episode) -> Option<String> {
    // Only a matched route: a concrete path (`/orders/7`) would make a series per order.
    episode.request.as_ref()?.route.clone()
}
