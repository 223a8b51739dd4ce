//! The functions EventBridge runs on a schedule (template.yaml's
//! `ScheduleV2` events) rather than API Gateway.

pub mod flush;
pub mod reconcile;
