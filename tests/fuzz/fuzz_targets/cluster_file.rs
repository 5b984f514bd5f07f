//! Any text as a cluster file: parsed and validated without a panic; a
//! file that is accepted also plans (nodes, port blocks, the load
//! balancer's layout) without one, and a refusal names a field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netplane::config::{Cluster, cluster::ConfigError, outbound};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Cluster::parse("fuzz", text) {
        Ok(c) => {
            let nodes = c.nodes();
            assert_eq!(nodes.len(), c.nodes.len());
            let _ = outbound::lb_plan(&c, None);
            let _ = outbound::subnet_routes(&c);
            let _ = c.warnings();
        }
        Err(ConfigError::Invalid { violations, .. }) => {
            assert!(!violations.is_empty());
            assert!(violations.iter().all(|v| !v.field.is_empty()));
        }
        Err(_) => {}
    }
    let _ = Cluster::parse_settings("fuzz", text);
});
