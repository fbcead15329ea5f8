//! `portmap`: publish hostIP:hostPort -> pod:port as nftables map elements.

pub mod config;
