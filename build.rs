// Same link setup as the solvers crate: see solvers/build.rs.
include!("solvers/build.rs");
