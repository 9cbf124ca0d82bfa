//! batch-gateway: callers holding a JWT manage campaigns on Batch's API
//! without ever holding Batch's REST key.
//!
//! [`App::build`] (in [`app`], the composition root) turns a validated
//! [`config::Config`] into the running state that both `main` and the tests
//! use; [`listen::serve`] puts it on sockets. The life of a request is in
//! [`gateway`]. This file is only the module list.

pub mod admin;
pub mod app;
pub mod audit;
pub mod authn;
pub mod cli;
pub mod common;
pub mod config;
pub mod dev;
pub mod error;
pub mod forward;
pub mod framing;
pub mod gateway;
pub mod json;
pub mod keyfile;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod policy;
pub mod preflight;
pub mod replay;
pub mod route;
pub mod secrets;
pub mod shared;
pub mod tls;

pub use app::App;
