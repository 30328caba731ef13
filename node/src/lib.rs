//! A Chorus node as a library: run your own event-sourced application on a cluster whose
//! members agree on every command.
//!
//! An [`Application`] names the aggregates and process managers a node runs; its
//! [`Application::main`] gives a program the whole command line (`node`, `init`, `up`,
//! `client`, `admin`), so `myapp up --nodes 4` runs a local cluster of `myapp` processes.
//! The `chorus` binary is the demo domain built this way; `examples/shop` in the repository
//! is a tutorial application.

mod access;
mod admin_client;
mod admission;
mod application;
pub mod cli;
pub mod client;
mod config;
mod feed;
mod frames;
mod http;
mod joining;
pub mod local;
mod peer_reads;
mod projections;
mod queues;
mod read_wire;
mod runtime;
mod serve;
mod store_reads;
mod transport;

pub use application::Application;
