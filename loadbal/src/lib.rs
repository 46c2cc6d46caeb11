//! om's node daemon (`omd`): node links, migration orchestration and, in a
//! later issue, the load balancer.

pub mod config;
pub mod daemon;
pub mod membership;
pub mod sys;
