//! `netplane-cni`: the CNI plugin binary (see netplane::cni).
use std::io::Read as _;

fn main() {
    let env = netplane::cni::Env::from_process();
    let mut stdin = String::new();
    if env.command != "VERSION" {
        let _ = std::io::stdin().read_to_string(&mut stdin);
    }
    let code = netplane::cni::respond(netplane::cni::run(&env, &stdin));
    std::process::exit(code);
}
