//! om's node daemon (`omd`): node links, migration orchestration, membership
//! and the load balancer ([`policy`], tried in [`simulate`]).

pub mod config;
pub mod daemon;
pub mod measure;
pub mod membership;
pub mod policy;
pub mod simulate;
pub mod sys;
