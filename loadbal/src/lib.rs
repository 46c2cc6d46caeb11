//! om load balancer and daemon
