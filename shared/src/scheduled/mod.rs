//! The functions EventBridge runs on a schedule (template.yaml's
//! `ScheduleV2` events) rather than API Gateway.

pub mod flush;
pub mod reconcile;

/// Whether a scheduled run's `until` (the last moment it may start a call
/// that can take seconds) has passed; `None` is no bound.
pub(crate) fn past(until: Option<std::time::Instant>) -> bool {
    until.is_some_and(|until| std::time::Instant::now() >= until)
}

/// `items` rotated to start at a random one (the random bits of a v4 UUID):
/// a list longer than one run (or one tick) gets through is covered across
/// runs, rather than its head every time and its tail never.
pub(crate) fn from_random_start<T>(mut items: Vec<T>) -> Vec<T> {
    if !items.is_empty() {
        let start = uuid::Uuid::new_v4().as_u128() % items.len() as u128;
        items.rotate_left(usize::try_from(start).unwrap_or(0));
    }
    items
}
