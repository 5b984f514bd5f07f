//! A CNI call with arbitrary environment and stdin, decoded and checked
//! (nothing is touched): no panic, and every refusal is a CNI error with a
//! code and a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netplane::cni::{self, Env};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Fields separated by NUL: command, container ID, netns, ifname,
    // CNI_ARGS, then stdin.
    let mut parts = text.splitn(6, '\0');
    let mut next = || parts.next().unwrap_or_default().to_string();
    let env = Env {
        command: next(),
        container_id: next(),
        netns: next(),
        ifname: next(),
        args: next(),
    };
    let stdin = next();
    if let Err(e) = cni::decide(&env, &stdin) {
        let json = e.to_json();
        assert!(json["code"].as_u64().is_some_and(|c| c > 0));
        assert!(json["msg"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let name = cni::host_veth_name(&env.container_id, &env.ifname);
    assert!(name.len() <= 15);
});
