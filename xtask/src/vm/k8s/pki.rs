//! The cluster's credentials, written to target/vm/k8s/ where the guests
//! read them (vagrant/provision/kubernetes.sh's K8S_CONF): a CA and the API
//! server's certificate, the service accounts' signing key, and one static
//! token per component and node (kube-apiserver's --token-auth-file), each
//! user named as Kubernetes' default RBAC roles and the Node authorizer
//! expect. A lab cluster's: fresh on every run, never reused.
use std::{net::Ipv4Addr, path::Path};

use anyhow::Result;
use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// The API server, on the load balancer's VM (the VNet's gateway).
pub const API_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 224, 0, 1);
/// The `kubernetes` Service's ClusterIP: the first of the service CIDR.
const API_SERVICE_IP: &str = "10.0.0.1";

/// (kubeconfig name, user, groups) of every client.
fn clients(nodes: &[&str]) -> Vec<(String, String, &'static str)> {
    let mut c = vec![
        ("admin".to_string(), "admin".to_string(), "system:masters"),
        (
            "kube-controller-manager".into(),
            "system:kube-controller-manager".into(),
            "",
        ),
        ("kube-scheduler".into(), "system:kube-scheduler".into(), ""),
        ("kube-proxy".into(), "system:kube-proxy".into(), ""),
    ];
    for n in nodes {
        c.push((n.to_string(), format!("system:node:{n}"), "system:nodes"));
    }
    c
}

pub fn write(dir: &Path, nodes: &[&str]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "netplane vm k8s CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec![
        API_ADDRESS.to_string(),
        API_SERVICE_IP.into(),
        "127.0.0.1".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
    ])?;
    server
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let cert = server.signed_by(&key, &issuer)?;
    let sa_key = KeyPair::generate()?;
    std::fs::write(dir.join("ca.crt"), ca_cert.pem())?;
    std::fs::write(dir.join("apiserver.crt"), cert.pem())?;
    std::fs::write(dir.join("apiserver.key"), key.serialize_pem())?;
    std::fs::write(dir.join("service-accounts.key"), sa_key.serialize_pem())?;
    std::fs::write(dir.join("service-accounts.pub"), sa_key.public_key_pem())?;
    let mut tokens = String::new();
    for (i, (file, user, groups)) in clients(nodes).into_iter().enumerate() {
        let token = random_token()?;
        tokens.push_str(&format!("{token},{user},uid-{i},\"{groups}\"\n"));
        std::fs::write(
            dir.join(format!("{file}.kubeconfig")),
            kubeconfig(&ca_cert.pem(), &user, &token),
        )?;
    }
    std::fs::write(dir.join("tokens.csv"), tokens)?;
    Ok(())
}

/// A kubeconfig carrying the CA itself, so it works wherever it is copied.
fn kubeconfig(ca_pem: &str, user: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: netplane-vm
  cluster:
    server: https://{API_ADDRESS}:6443
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: netplane-vm
  context:
    cluster: netplane-vm
    user: {user}
current-context: netplane-vm
"
    )
}

/// 32 random bytes from the kernel, hex.
fn random_token() -> Result<String> {
    let mut b = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
