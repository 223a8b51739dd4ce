//! The functions EventBridge runs on a schedule (template.yaml's
//! `ScheduleV2` events) rather than API Gateway.

pub mod flush;
pub mod reconcile;

/// Whether a scheduled run's `until` (the last moment it may start a call
/// that can take seconds) has passed; `None` is no bound.
pub(crate) fn past(until: Option<std::time::Instant>) -> bool {
    until.is_some_and(|until| std::time::Instant::now() >= until)
}
